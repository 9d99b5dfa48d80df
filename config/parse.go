package config

// STUB: replaced by the owner of package config.

// Load reads and decodes the binding file at path. On failure the error is
// an ErrorList naming every problem with file:line:column.
func Load(path string) (*Config, error) { panic("unimplemented") }
