package main_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/service/gateway"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

// gatewayBinary builds imagerecordsd once per test run.
func gatewayBinary(t *testing.T) string {
	t.Helper()
	binaryOnce.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		dir, err := os.MkdirTemp("", "imagerecordsd-test")
		if err != nil {
			binaryErr = err
			return
		}
		binaryPath = filepath.Join(dir, "imagerecordsd")
		out, err := exec.Command(goBin, "build", "-o", binaryPath, ".").CombinedOutput()
		if err != nil {
			binaryErr = &buildError{out: string(out), err: err}
		}
	})
	if binaryErr != nil {
		t.Fatal(binaryErr)
	}
	return binaryPath
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return "go build: " + e.err.Error() + "\n" + e.out }

// daemon is the real gateway binary running as a child process.
type daemon struct {
	cmd     *exec.Cmd
	addr    string
	logs    *gatewaytest.Output
	scanned chan struct{} // closed when stderr is read to its end
}

// startDaemon starts the gateway binary with args (and none of the
// IMAGERECORDS_ variables of the test's environment) and waits until it
// serves.
func startDaemon(t *testing.T, args ...string) *daemon {
	t.Helper()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, gateway.EnvPrefix) {
			env = append(env, kv)
		}
	}
	return startDaemonEnv(t, env, args...)
}

// startDaemonEnv starts the gateway binary with args and exactly the
// environment env, and waits until it serves.
func startDaemonEnv(t *testing.T, env []string, args ...string) *daemon {
	t.Helper()
	cmd := exec.Command(gatewayBinary(t), args...)
	cmd.Env = env
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	d := &daemon{cmd: cmd, logs: &gatewaytest.Output{}, scanned: make(chan struct{})}
	addrs := make(chan string, 1)
	go func() {
		defer close(d.scanned)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			d.logs.Write(append(sc.Bytes(), '\n'))
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "serving" {
				addrs <- line.Addr
			}
		}
	}()
	select {
	case d.addr = <-addrs:
	case <-time.After(30 * time.Second):
		t.Fatalf("the gateway did not start:\n%s", d.logs.String())
	}
	return d
}

// wait reads the logs to their end (before Wait, which closes the pipe)
// and returns how the process ended.
func (d *daemon) wait() error {
	<-d.scanned
	return d.cmd.Wait()
}

// TestSIGTERMDrainsTheRealBinary sends SIGTERM to the gateway process while
// a stream is in flight: the stream finishes with every record and the
// process exits 0.
func TestSIGTERMDrainsTheRealBinary(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "--simulate", "--simulate-latency", "20ms", "--listen", "127.0.0.1:0", "--shutdown-grace", "30s")
	cmd, addr, logs := d.cmd, d.addr, d.logs

	desktop := ecdsim.DefaultDesktops(1)[0] // 1234 records: 13 pages of 20 ms
	stream, err := gatewaytest.ClientOf(addr, connect.WithGRPC()).StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: desktop.ID,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	got := len(stream.Msg().GetRecords())
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for stream.Receive() {
		got += len(stream.Msg().GetRecords())
	}
	if err := stream.Err(); err != nil || got != desktop.Records {
		t.Errorf("the stream in flight at SIGTERM: %d records, %v; want all %d", got, err, desktop.Records)
	}
	if err := d.wait(); err != nil {
		t.Errorf("the gateway exited with %v, want 0\n%s", err, logs.String())
	}
	for _, msg := range []string{`"msg":"shutting down: draining in-flight requests"`, `"msg":"stopped"`} {
		if !strings.Contains(logs.String(), msg) {
			t.Errorf("logs lack %s:\n%s", msg, logs.String())
		}
	}
}

// TestSIGHUPNeverKillsTheRealBinary sends SIGHUP to the gateway process,
// with and without files to reload, while a stream is in flight: the
// process logs what it reloaded, keeps serving (the stream gets every
// record), and exits 0 on SIGTERM. Before issue 14 a SIGHUP without
// --auth-tokens-file ended the process (exit 129).
func TestSIGHUPNeverKillsTheRealBinary(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokens, keys := filepath.Join(dir, "tokens"), filepath.Join(dir, "token-keys")
	if err := os.WriteFile(tokens, []byte("ops token-ops-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keys, []byte("3f9a1c7e5b2d8f0a6c4e1b9d7f3a5c8e0b2d4f6a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testCases := []struct {
		name   string
		args   []string
		token  string
		logged []string
	}{
		{"nothing to reload", nil, "", []string{`"msg":"reload: nothing to reload`}},
		{"tokens and token keys", []string{"--auth-tokens-file", tokens, "--token-key-file", keys}, "token-ops-0123456789abcdef",
			[]string{`"msg":"auth tokens reloaded","tokens":1`, `"msg":"token keys reloaded"`}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := startDaemon(t, append([]string{"--simulate", "--simulate-latency", "20ms", "--listen", "127.0.0.1:0"}, tc.args...)...)
			c := gatewaytest.ClientOf(d.addr, connect.WithGRPC())
			desktop := ecdsim.DefaultDesktops(1)[0] // 1234 records: 13 pages of 20 ms
			req := connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: desktop.ID})
			if tc.token != "" {
				req.Header().Set("Authorization", "Bearer "+tc.token)
			}
			stream, err := c.StreamImageModifiedRecords(t.Context(), req)
			if err != nil {
				t.Fatal(err)
			}
			if !stream.Receive() {
				t.Fatal(stream.Err())
			}
			got := len(stream.Msg().GetRecords())
			for range 2 {
				if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
					t.Fatal(err)
				}
			}
			for _, line := range tc.logged {
				d.logs.WaitFor(t, line, 10*time.Second)
			}
			for stream.Receive() {
				got += len(stream.Msg().GetRecords())
			}
			if err := stream.Err(); err != nil || got != desktop.Records {
				t.Errorf("the stream across SIGHUP: %d records, %v; want all %d", got, err, desktop.Records)
			}
			if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := d.wait(); err != nil {
				t.Errorf("the gateway exited with %v after SIGHUP and SIGTERM, want 0\n%s", err, d.logs.String())
			}
		})
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binaryPath != "" {
		_ = os.RemoveAll(filepath.Dir(binaryPath))
	}
	os.Exit(code)
}

// TestExitCodes runs the binary with command lines that end at once: -h
// exits 0, a bad flag or variable exits 2 with a message naming it.
func TestExitCodes(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		args    []string
		env     string
		code    int
		message string
	}{
		{args: []string{"-h"}, code: 0, message: "Usage: imagerecordsd"},
		{args: []string{"--no-such-flag"}, code: 2, message: "no-such-flag"},
		{args: []string{"--signature", "v2"}, code: 2, message: "neither v3 nor v1"},
		{env: "IMAGERECORDS_UPSTREAM_QPS=lots", code: 2, message: "IMAGERECORDS_UPSTREAM_QPS"},
	}
	for _, tc := range testCases {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second) // a wrong exit path would serve forever
		cmd := exec.CommandContext(ctx, gatewayBinary(t), tc.args...)
		cmd.Env = append(os.Environ(), "ALIBABA_CLOUD_ECS_METADATA_DISABLED=true")
		if tc.env != "" {
			cmd.Env = append(cmd.Env, tc.env)
		}
		out, err := cmd.CombinedOutput()
		cancel()
		code := 0
		if exit, ok := errors.AsType[*exec.ExitError](err); ok {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if code != tc.code || !strings.Contains(string(out), tc.message) {
			t.Errorf("args %q env %q: exit %d with %q; want exit %d and a message with %q", tc.args, tc.env, code, out, tc.code, tc.message)
		}
	}
}
