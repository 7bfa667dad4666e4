package catalog_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
	"github.com/kmodctl/packer-plugin-kmod/internal/catalogtest"
)

// TestServeDevAndFlags: `serve --dev` makes a CA clients can trust and an
// admin token, answers, and stops on SIGTERM; wrong command lines fail
// with exit status 2 naming the flag.
func TestServeDevAndFlags(t *testing.T) {
	bin := catalogtest.Build(t)
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--dev"}, "--data is required"},
		{[]string{"serve", "--data", dir}, "--tls-cert"},
		{[]string{"serve", "--data", dir, "--dev", "--tls-cert", "x"}, "either --tls-cert"},
		{[]string{"serve", "--data", dir, "--dev", "--listen", "nonsense"}, "--listen"},
		{[]string{"serve", "--data", dir, "--dev", "--raft", "0.0.0.0:9000"}, "--raft"},
	} {
		out, err := exec.Command(bin, c.args...).CombinedOutput()
		var ee *exec.ExitError
		if !errorsAs(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), c.want) {
			t.Errorf("%v: %v %s, want exit 2 and %q", c.args, err, out, c.want)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	api := l.Addr().String()
	l.Close()
	data := filepath.Join(dir, "node")
	cmd := exec.Command(bin, "serve", "--data", data, "--listen", api, "--dev", "--admin-token-file", filepath.Join(dir, "admin"))
	var log catalogtest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
		}
	}()
	ca := filepath.Join(data, "dev-ca", "ca.pem")
	var h *catalog.Health
	for i := 0; i < 300; i++ {
		if _, err := os.Stat(ca); err == nil {
			cli, err := catalog.New("https://"+api, catalog.WithCAFile(ca), catalog.WithRetries(0))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			h, err = cli.Health(ctx)
			cancel()
			if err == nil {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if h == nil || h.Leader == "" || len(h.Members) != 1 || h.Members[0].Role != "voter" {
		t.Fatalf("health of a dev node: %+v\n%s", h, &log)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "admin"))
	if err != nil || !strings.HasPrefix(string(tok), "kmc_") {
		t.Fatalf("admin token file: %q %v", tok, err)
	}
	cli, err := catalog.New("https://"+api, catalog.WithCAFile(ca), catalog.WithToken(string(tok)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Tokens(context.Background()); err != nil {
		t.Errorf("admin token: %v", err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("after SIGTERM: %v\n%s", err, &log)
		}
	case <-time.After(60 * time.Second):
		t.Errorf("still running 60 s after SIGTERM\n%s", &log)
	}
}

func errorsAs(err error, target **exec.ExitError) bool {
	ee, ok := err.(*exec.ExitError)
	if ok {
		*target = ee
	}
	return ok
}
