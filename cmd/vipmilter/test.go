package main

// STUB: replaced by the owner of this command.

const testHelp = `TODO`

func cmdTest(c *cli, args []string) error { panic("unimplemented") }
