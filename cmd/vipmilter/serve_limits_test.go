package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/config"
)

// TestMilterSettingsLimits: the daemon limits written in the binding file
// reach the milter, on a Postfix host and on a Sendmail host.
func TestMilterSettingsLimits(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, config.DefaultHeaderKeyFile), []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	limits := "Max_Header_Bytes = 8K\nMax_Connections = 7\nMilter_Idle_Timeout = 10m\nMilter_Packet_Timeout = 5s\n"
	for _, extra := range []string{"", "Sendmail_Socketmap = inet:127.0.0.1:8895\n"} {
		cfg, err := config.Parse(filepath.Join(dir, "vipmilter.conf"), []byte(limits+extra))
		if err != nil {
			t.Fatal(err)
		}
		st, err := milterSettings(slog.New(slog.NewTextHandler(io.Discard, nil)), cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st.MaxHeaderBytes != 8<<10 || st.MaxConnections != 7 || st.CommandTimeout != 10*time.Minute || st.PacketTimeout != 5*time.Second {
			t.Errorf("socketmap %q: settings %+v do not carry the file's limits", extra, st)
		}
	}
}
