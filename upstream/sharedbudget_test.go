package upstream_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/upstreamtest"
)

// scriptedBudget is a shared budget that answers from down: while down
// is true every Take fails, as a Redis that is gone would; a blocking
// budget never answers until the caller gives up.
type scriptedBudget struct {
	mu        sync.Mutex
	down      bool
	block     bool
	keys      []string
	deadlines []time.Duration // how long each Take was given
}

func (b *scriptedBudget) Take(ctx context.Context, key string, rate float64, burst int) (time.Duration, error) {
	b.mu.Lock()
	b.keys = append(b.keys, key)
	if d, ok := ctx.Deadline(); ok {
		b.deadlines = append(b.deadlines, time.Until(d))
	} else {
		b.deadlines = append(b.deadlines, -1)
	}
	down, block := b.down, b.block
	b.mu.Unlock()
	switch {
	case block:
		<-ctx.Done()
		return 0, ctx.Err()
	case down:
		return 0, errors.New("dial tcp 127.0.0.1:6379: connect: connection refused (redis://user:hunter2@127.0.0.1:6379/0)")
	}
	return 0, nil
}

func (b *scriptedBudget) set(down, block bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.down, b.block = down, block
}

func (b *scriptedBudget) asked() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.keys)
}

// budgetClient is a client at the gateway's default rate limit (the budget is asked
// only when there is a rate to space calls at) with budget b and its log.
func budgetClient(t *testing.T, b upstream.SharedBudget, account string, creds upstream.CredentialsProvider) (*upstream.Client, *bytes.Buffer) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, upstreamtest.OKBody)
	}))
	t.Cleanup(srv.Close)
	log := &bytes.Buffer{}
	c := upstream.NewClient(creds, upstream.WithEndpoint(srv.URL),
		upstream.WithRateLimit(100, 20), // the gateway's default --upstream-qps and --upstream-burst
		upstream.WithSharedBudget(b, account),
		upstream.WithLogger(slog.New(slog.NewTextHandler(&lockedWriter{mu: &sync.Mutex{}, w: log}, nil))))
	return c, log
}

// TestSharedBudgetOutageFailsNoCall: while the budget cannot be reached
// every call still goes (paced by the replica alone), the outage is logged
// once however many calls meet it, without the URL's password, and once
// the budget answers again the client returns to it and says so once.
func TestSharedBudgetOutageFailsNoCall(t *testing.T) {
	t.Parallel()
	b := &scriptedBudget{down: true}
	c, log := budgetClient(t, b, "", staticCreds(longKey))
	call := func() {
		t.Helper()
		if _, err := c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}); err != nil {
			t.Fatalf("a call failed while the budget was down: %v", err)
		}
	}
	for range 50 {
		call()
	}
	if got := strings.Count(log.String(), "the shared upstream budget cannot be reached"); got != 1 {
		t.Fatalf("the outage was logged %d times, want once:\n%s", got, log)
	}
	if strings.Contains(log.String(), "hunter2") {
		t.Errorf("the log holds the budget URL's password:\n%s", log)
	}
	if n := b.asked(); n >= 50 {
		t.Errorf("the budget was asked %d times in its outage: the client must not wait on it for every call", n)
	}
	// The budget is back: calls go on, and within its retry interval
	// the client asks it again. (Bounded: the test fails, not hangs.)
	b.set(false, false)
	asked := b.asked()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for b.asked() == asked {
		if ctx.Err() != nil {
			t.Fatal("the client never asked the budget again after its outage")
		}
		call()
	}
	call()
	if got := strings.Count(log.String(), "the shared upstream budget answers again"); got != 1 {
		t.Errorf("the recovery was logged %d times, want once:\n%s", got, log)
	}
}

// TestSlowSharedBudgetIsBounded: a budget that never answers costs each
// call at most the budget's bound (100 ms), not the call.
func TestSlowSharedBudgetIsBounded(t *testing.T) {
	t.Parallel()
	b := &scriptedBudget{block: true}
	c, _ := budgetClient(t, b, "", staticCreds(longKey))
	if _, err := c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}); err != nil {
		t.Fatalf("a call failed on a budget that does not answer: %v", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.deadlines) != 1 || b.deadlines[0] < 0 || b.deadlines[0] > 100*time.Millisecond {
		t.Errorf("the budget was given %v, want one question bounded by 100 ms", b.deadlines)
	}
}

// TestSharedBudgetKeys: the key names the account by a hash of its
// AccessKeyId (never the id itself), the action and the region; a named
// account (--quota-key) is used as given; STS credentials without a name
// are warned about once, since their key id changes at every refresh.
func TestSharedBudgetKeys(t *testing.T) {
	t.Parallel()
	keyOf := func(account string, creds upstream.CredentialsProvider) (string, string) {
		b := &scriptedBudget{}
		c, log := budgetClient(t, b, account, creds)
		for range 2 {
			if _, err := c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}); err != nil {
				t.Fatal(err)
			}
		}
		return b.keys[0], log.String()
	}
	long, _ := keyOf("", staticCreds(longKey))
	again, _ := keyOf("", staticCreds(longKey))
	if long != again {
		t.Errorf("two replicas with one key use two budgets: %q, %q", long, again)
	}
	if strings.Contains(long, longKey.AccessKeyID) {
		t.Errorf("the budget key %q holds the AccessKeyId", long)
	}
	for _, part := range []string{upstream.Action, testRegion} {
		if !strings.Contains(long, part) {
			t.Errorf("the budget key %q does not name %q", long, part)
		}
	}
	named, _ := keyOf("prod-account", staticCreds(longKey))
	if !strings.Contains(named, ":prod-account:") {
		t.Errorf("--quota-key prod-account made the key %q", named)
	}
	sts, log := keyOf("", staticCreds(stsKey))
	if strings.Contains(sts, stsKey.AccessKeyID) {
		t.Errorf("the budget key %q holds the STS AccessKeyId", sts)
	}
	if got := strings.Count(log, "--quota-key"); got != 1 {
		t.Errorf("STS credentials without --quota-key were warned about %d times, want once:\n%s", got, log)
	}
	if _, log := keyOf("role-hash", staticCreds(stsKey)); strings.Contains(log, "--quota-key") {
		t.Errorf("a named account was warned about:\n%s", log)
	}
}
