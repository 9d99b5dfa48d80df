package main

// STUB: replaced by the owner of this command.

const checkHelp = `TODO`

func cmdCheck(c *cli, args []string) error { panic("unimplemented") }
