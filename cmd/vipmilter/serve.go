package main

// STUB: replaced by the owner of this command.

const serveHelp = `TODO`

func cmdServe(c *cli, args []string) error { panic("unimplemented") }
