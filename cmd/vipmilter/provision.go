package main

// STUB: replaced by the owner of this command.

const provisionHelp = `TODO`

func cmdProvision(c *cli, args []string) error { panic("unimplemented") }
