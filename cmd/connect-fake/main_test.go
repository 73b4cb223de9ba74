package main

import (
	"bytes"
	"flag"
	"strings"
	"testing"
)

// -h names the helper commands, authorize among them, not only the flags.
func TestUsageNamesHelperCommands(t *testing.T) {
	var buf bytes.Buffer
	flag.CommandLine.SetOutput(&buf)
	defer flag.CommandLine.SetOutput(nil)
	usage()
	for _, want := range []string{"connect-fake authorize -base-url URL", "-redirect-uri", "connect-fake check-token", "code="} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("usage lacks %q:\n%s", want, buf.String())
		}
	}
}
