package main

// STUB: replaced by the owner of this command.

const postfixHelp = `TODO`

func cmdPostfix(c *cli, args []string) error { panic("unimplemented") }
