// Command gendoc writes docs/config.md from the binding file's keyword
// table, so the reference cannot drift from the decoder.
package main

import (
	"flag"
	"log"
	"os"

	"github.com/vipmilter/vipmilter/config"
)

func main() {
	out := flag.String("o", "docs/config.md", "output file")
	flag.Parse()
	if err := os.WriteFile(*out, config.Reference(), 0o644); err != nil {
		log.Fatal(err)
	}
}
