package gateway_test

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"hash/fnv"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service/gateway"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

const (
	tokenKey1 = "k1-7d0c2f6b1e9a4c3d8b5f0e2a6c9d1b4f7e3a"
	tokenKey2 = "k2-3b8e1d5a9c2f7e0b4d6a8c1e3f5b7d9a2c4e"
)

// listPage lists one page of desktop with page_token token.
func listPage(ctx context.Context, c imagerecordsv1connect.ImageRecordsServiceClient, desktop, token string) (*imagerecordsv1.ListImageModifiedRecordsResponse, error) {
	res, err := c.ListImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: desktop, PageSize: 5, PageToken: token,
	}))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// TestForgedTokensNeverReachTheUpstream mints the tokens issue 14 found
// possible (the unkeyed format with NextToken bytes of the caller's
// choice), alters real ones, and brings tokens of another key or desktop:
// every one is InvalidArgument on page_token, for List and Stream, and the
// upstream is never called.
func TestForgedTokensNeverReachTheUpstream(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops})
	other := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops}) // another random key
	c := h.Client(connect.WithGRPC())
	page, err := listPage(t.Context(), c, bigDesktop, "")
	if err != nil {
		t.Fatal(err)
	}
	real := page.GetNextPageToken()
	foreign, err := listPage(t.Context(), other.Client(connect.WithGRPC()), bigDesktop, "")
	if err != nil {
		t.Fatal(err)
	}
	unkeyed := func(next string) string {
		f := fnv.New32a()
		f.Write([]byte(gatewaytest.Region + "\x00" + bigDesktop))
		b := binary.BigEndian.AppendUint32([]byte{1}, f.Sum32())
		b = append(binary.AppendUvarint(b, 0), next...)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	flip := func(tok string, i int) string {
		b := []byte(tok)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	testCases := []struct{ name, token, says string }{
		{"unkeyed, NextToken \\x00\\xff", unkeyed("\x00\xff"), "earlier gateway version"},
		{"unkeyed, a real-looking NextToken", unkeyed("AAAAAV3MpHK1AP0pfERHZN5pu6l3d"), "earlier gateway version"},
		{"a real token, first payload character changed", flip(real, 9), "does not verify"},
		{"a real token, last character changed", flip(real, len(real)-1), ""},
		{"a real token, cut short", real[:len(real)-4], ""},
		{"another gateway's key", foreign.GetNextPageToken(), "key this gateway does not hold"},
		{"random bytes", base64.RawURLEncoding.EncodeToString([]byte("\x02\x01hello, upstream, here is my token")), ""},
	}
	before := h.Sim.Stats().Requests
	for _, tc := range testCases {
		for _, rpc := range []string{"list", "stream"} {
			var err error
			if rpc == "list" {
				_, err = listPage(t.Context(), c, bigDesktop, tc.token)
			} else {
				_, err = gatewaytest.Stream(t.Context(), c, streamRequest(bigDesktop, tc.token).Msg)
			}
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("%s (%s): %v, want InvalidArgument", tc.name, rpc, err)
				continue
			}
			gatewaytest.CheckFieldViolation(t, err, "page_token")
			if !strings.Contains(err.Error(), tc.says) {
				t.Errorf("%s (%s): %v, want it to say %q", tc.name, rpc, err, tc.says)
			}
		}
	}
	// A real token for another desktop.
	if _, err := listPage(t.Context(), c, smallDesktop, real); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("a token of another desktop: %v", err)
	}
	if after := h.Sim.Stats().Requests; after != before {
		t.Errorf("forged tokens caused %d upstream calls", after-before)
	}
}

// TestTokensResumeThroughAnyReplicaWithTheKeyFile: replicas that share
// --token-key-file continue each other's pages; a replica without it
// warns at start that its tokens are replica-local, and refuses theirs,
// saying why.
func TestTokensResumeThroughAnyReplicaWithTheKeyFile(t *testing.T) {
	t.Parallel()
	keys := filepath.Join(t.TempDir(), "token-keys")
	writeFile(t, keys, "# the sealing key first\n"+tokenKey1+"\n")
	var aLogs, loneLogs gatewaytest.Output
	a := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Args: []string{"--token-key-file", keys}, Logs: &aLogs})
	b := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Args: []string{"--token-key-file", keys}})
	lone := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Logs: &loneLogs})

	// The start-up lines are written before New returns.
	const randomKey = `"level":"WARN","msg":"no --token-key-file: page and resume tokens are signed with a random key of this process, so they are valid only on this replica`
	if !strings.Contains(loneLogs.String(), randomKey) {
		t.Errorf("a gateway without --token-key-file did not warn that its tokens are replica-local:\n%s", loneLogs.String())
	}
	if strings.Contains(aLogs.String(), "no --token-key-file") || !strings.Contains(aLogs.String(), `"msg":"page tokens signed with the keys of --token-key-file"`) {
		t.Errorf("a gateway with --token-key-file: want the key file's line and no warning:\n%s", aLogs.String())
	}

	first, err := listPage(t.Context(), a.Client(connect.WithGRPC()), bigDesktop, "")
	if err != nil {
		t.Fatal(err)
	}
	second, err := listPage(t.Context(), b.Client(connect.WithGRPC()), bigDesktop, first.GetNextPageToken())
	if err != nil {
		t.Fatalf("replica b with replica a's token: %v", err)
	}
	b.CheckRecords(t, bigDesktop, 5, second.GetRecords())
	msgs, err := gatewaytest.Stream(t.Context(), a.Client(connect.WithGRPC()), streamRequest(bigDesktop, second.GetNextPageToken()).Msg)
	if err != nil || len(gatewaytest.RecordsOf(msgs)) != 1234-10 {
		t.Fatalf("replica a streaming from replica b's token: %d records, %v", len(gatewaytest.RecordsOf(msgs)), err)
	}
	_, err = listPage(t.Context(), lone.Client(connect.WithGRPC()), bigDesktop, first.GetNextPageToken())
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "key this gateway does not hold") {
		t.Errorf("a replica without the key file: %v", err)
	}
}

// TestTokenKeyRotationOnReload rotates the key of a running gateway as an
// operator would: the new key first and the old one kept (old tokens still
// open), then the old key dropped (old tokens refused). A bad key file
// keeps the keys in force.
func TestTokenKeyRotationOnReload(t *testing.T) {
	t.Parallel()
	keys := filepath.Join(t.TempDir(), "token-keys")
	writeFile(t, keys, tokenKey1+"\n")
	var logs gatewaytest.Output
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Args: []string{"--token-key-file", keys}, Logs: &logs})
	c := h.Client(connect.WithGRPC())
	page, err := listPage(t.Context(), c, bigDesktop, "")
	if err != nil {
		t.Fatal(err)
	}
	old := page.GetNextPageToken()

	writeFile(t, keys, tokenKey2+"\n"+tokenKey1+"\n")
	if err := h.Gateway.Reload(); err != nil {
		t.Fatal(err)
	}
	logs.WaitFor(t, `"msg":"token keys reloaded"`, 10*time.Second)
	if _, err := listPage(t.Context(), c, bigDesktop, old); err != nil {
		t.Errorf("a token of the previous key during the rotation: %v", err)
	}
	page, err = listPage(t.Context(), c, bigDesktop, "")
	if err != nil {
		t.Fatal(err)
	}
	fresh := page.GetNextPageToken()
	if fresh == old {
		t.Error("the same token after the rotation: the new key does not seal")
	}

	writeFile(t, keys, "too-short\n")
	if err := h.Gateway.Reload(); err == nil {
		t.Error("a key file with a 9-byte key was reloaded")
	}
	writeFile(t, keys, tokenKey2+"\n")
	if err := h.Gateway.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := listPage(t.Context(), c, bigDesktop, fresh); err != nil {
		t.Errorf("a token of the new key: %v", err)
	}
	if _, err := listPage(t.Context(), c, bigDesktop, old); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("a token of the key rotated out: %v", err)
	}
}

// TestRateLimitWaitPastTheDeadlineIsDeadlineExceeded: at the default rate
// limit (100/s), with two seconds of calls queued by one peer, that peer's
// next call, whose deadline is shorter than its queue, fails at once with
// DeadlineExceeded (the wait could not end in time), never with
// Unavailable / UPSTREAM_UNREACHABLE, and never reaches the upstream;
// another peer's call with the same deadline takes its turn and succeeds.
func TestRateLimitWaitPastTheDeadlineIsDeadlineExceeded(t *testing.T) {
	t.Parallel()
	const probeDesktop = "ecd-probe0000000001"
	const queued = 200 // two seconds of the limit
	started := make(chan struct{})
	var once sync.Once
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: append([]ecdsim.Desktop{{ID: probeDesktop, Records: 10}}, testDesktops...),
		WrapSimulator: func(next http.Handler) http.Handler {
			var served int
			var mu sync.Mutex
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				next.ServeHTTP(w, r)
				mu.Lock()
				defer mu.Unlock()
				// The burst of 20 went through and the limit paces the
				// rest: every other call of the load is queued.
				if served++; served == 30 {
					once.Do(func() { close(started) })
				}
			})
		},
	})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	busy := clientFrom(h, "127.0.0.2", 0)
	var load sync.WaitGroup
	for range queued {
		load.Go(func() { _, _ = listPage(ctx, busy, bigDesktop, "") })
	}
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("the load never reached the upstream")
	}

	probe := func(c imagerecordsv1connect.ImageRecordsServiceClient) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := listPage(ctx, c, probeDesktop, "")
		return time.Since(start), err
	}
	took, err := probe(busy)
	if connect.CodeOf(err) != connect.CodeDeadlineExceeded {
		t.Fatalf("a 300 ms call behind its own 2 s queue: %v, want DeadlineExceeded", err)
	}
	// The gateway's answer, not the client's own timer: it came at once.
	if !strings.Contains(err.Error(), "while calling the upstream") || took > 250*time.Millisecond {
		t.Errorf("after %v: %q; want the gateway's answer at once", took, err)
	}
	if info, ok := gatewaytest.Detail[*errdetails.ErrorInfo](err); ok && info.GetReason() == "UPSTREAM_UNREACHABLE" {
		t.Errorf("reported as %s", info.GetReason())
	}
	if _, ok := gatewaytest.Detail[*errdetails.RetryInfo](err); ok {
		t.Error("a RetryInfo on a deadline the caller set")
	}
	if calls := h.Sim.DesktopCalls(probeDesktop); calls != 0 {
		t.Errorf("the refused call reached the upstream %d times", calls)
	}
	if took, err := probe(clientFrom(h, "127.0.0.3", 0)); err != nil {
		t.Errorf("another peer's 300 ms call during the queue: %v after %v; want its turn", err, took)
	}
	load.Wait()
}

func TestHardeningFlags(t *testing.T) {
	t.Parallel()
	ok := [][]string{
		{"--peer-identity", "header:x-forwarded-client-cert", "--trusted-proxies", "127.0.0.1,10.0.0.0/8,::1"},
		{"--upstream-endpoint", "http://127.0.0.1:9000"}, // a local simulator
		{"--upstream-endpoint", "http://[::1]:9000"},
		{"--upstream-endpoint", "http://ecd-proxy.internal", "--upstream-allow-insecure"},
		{"--upstream-endpoint", "https://ecd.vpc-proxy.aliyuncs.com"},
	}
	for _, args := range ok {
		if _, err := gateway.ParseArgs(args, noEnv, io.Discard); err != nil {
			t.Errorf("ParseArgs(%q): %v", args, err)
		}
	}
	bad := []struct {
		args []string
		says string
	}{
		{[]string{"--upstream-endpoint", "http://ecd-proxy.internal"}, "clear text"},
		{[]string{"--peer-identity", "cookie"}, "none of remote-ip"},
		{[]string{"--peer-identity", "client-cert"}, "needs --client-ca"},
		{[]string{"--peer-identity", "token"}, "needs --auth-tokens-file"},
		{[]string{"--peer-identity", "header:x-caller"}, "needs --trusted-proxies"},
		{[]string{"--trusted-proxies", "sidecar"}, "neither an IP address"},
		{[]string{"--max-connections", "0"}, "must be positive"},
		{[]string{"--max-streams-per-peer", "-1"}, "must be positive"},
		{[]string{"--stream-stall-timeout", "0s"}, "must be positive"},
		{[]string{"--idle-timeout", "0s"}, "must be positive"},
	}
	for _, tc := range bad {
		_, err := gateway.ParseArgs(tc.args, noEnv, io.Discard)
		if _, isUsage := errors.AsType[*gateway.UsageError](err); !isUsage || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("ParseArgs(%q) = %v, want a usage error saying %q", tc.args, err, tc.says)
		}
	}
}
