package upstream

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// SharedBudget spaces the upstream calls of every replica of a gateway
// together: one budget per account, action and region, kept where every
// replica reaches it (package upstream/redisquota keeps it in Redis). On
// top of it each replica's [Pacer] still adapts to throttling; with a
// shared budget the pacer's rate stands for the whole deployment's.
type SharedBudget interface {
	// Take asks for one call under key now, at rate calls/s with burst
	// calls at most at once. It returns 0 when the call may go, else how
	// long to wait before asking again. An error means the budget cannot
	// be reached; the client then goes on without it for a while.
	Take(ctx context.Context, key string, rate float64, burst int) (wait time.Duration, err error)
}

// WithSharedBudget makes every attempt also take its turn in b, a budget
// shared by every replica. account names the Alibaba Cloud account in the
// budget's keys; "" derives it from the credentials of each attempt (a
// hash of the AccessKeyId: the same long-term key on every replica is the
// same account; an STS session's key changes at every refresh, so name
// the account, e.g. by its role ARN, when the gateway runs on STS
// credentials). Default: none.
func WithSharedBudget(b SharedBudget, account string) Option {
	return func(c *Client) {
		c.shared = &sharedBudget{budget: b, account: account, burst: 1}
	}
}

// sharedBudget is the client's side of a SharedBudget: its keys, and the
// fallback to the pacer alone while the budget cannot be reached.
type sharedBudget struct {
	budget  SharedBudget
	account string
	burst   int

	// downUntil is when to ask the budget again after it failed; zero
	// while it answers.
	mu        sync.Mutex
	downUntil time.Time
	down      atomic.Bool
	stsWarned atomic.Bool
}

const (
	// sharedBudgetTimeout bounds one question to the shared budget: a
	// slow budget must not slow the calls it paces.
	sharedBudgetTimeout = 100 * time.Millisecond
	// sharedBudgetRetry is how long the client goes on without a budget
	// that failed before it asks it again.
	sharedBudgetRetry = time.Second
)

// sharedBudgetDown is what the log says when the budget cannot be reached.
const sharedBudgetDown = "the shared upstream budget cannot be reached; pacing this replica alone until it answers"

// accountKey names the account of creds in budget keys: the configured
// name, or a hash of the AccessKeyId, never the key itself.
func (s *sharedBudget) accountKey(creds Credentials, logger *slog.Logger) string {
	if s.account != "" {
		return s.account
	}
	if creds.SecurityToken != "" && s.stsWarned.CompareAndSwap(false, true) {
		logger.Warn("the shared upstream budget is keyed by an STS AccessKeyId, which changes at every refresh and splits the budget; set --quota-key (e.g. to the role ARN)")
	}
	sum := sha256.Sum256([]byte("imagerecords account\x00" + creds.AccessKeyID))
	return hex.EncodeToString(sum[:8])
}

// key is the budget key of one account, action and region.
func (s *sharedBudget) key(account, region string) string {
	return "imagerecords:quota:" + account + ":" + Action + ":" + region
}

// takeShared waits until the shared budget lets the call go, at the pacer's
// rate; while the budget cannot be reached it lets every call go at once
// (the pacer alone paces them). It returns the time waited, and
// ErrPacingDeadline when the budget's turn would come after ctx's
// deadline.
func (c *Client) takeShared(ctx context.Context, in DescribeInput) (time.Duration, error) {
	s := c.shared
	if s == nil || s.skip() {
		return 0, nil
	}
	var creds Credentials
	if s.account == "" {
		var err error
		if creds, err = c.credentials.Credentials(ctx); err != nil {
			return 0, nil // the attempt fails on it, and says why
		}
	}
	key := s.key(s.accountKey(creds, c.logger), in.RegionID)
	rate := c.pacer.Rate()
	if rate <= 0 {
		return 0, nil // nothing to space yet: no ceiling, no throttle
	}
	var waited time.Duration
	for {
		qctx, cancel := context.WithTimeout(ctx, sharedBudgetTimeout)
		wait, err := s.budget.Take(qctx, key, rate, s.burst)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return waited, context.Cause(ctx)
			}
			s.fail(ctx, c, err)
			if waited > 0 {
				// Held by the budget until it was lost: take a turn with
				// the pacer, which now paces this replica alone, rather
				// than go at once with every other call the budget held.
				w, err := c.pacer.waitRetry(ctx)
				return waited + w, err
			}
			return waited, nil
		}
		s.recover(ctx, c)
		if wait <= 0 {
			return waited, nil
		}
		if !fitsDeadline(ctx, wait) {
			return waited, ErrPacingDeadline
		}
		c.pacer.noteWaited()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return waited, context.Cause(ctx)
		case <-t.C:
		}
		waited += wait
	}
}

// skip reports whether the budget failed recently.
func (s *sharedBudget) skip() bool {
	if !s.down.Load() {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Now().Before(s.downUntil)
}

// fail records that the budget could not be reached: the pacer paces this
// replica alone, at its share of the deployment's rate; logged and counted
// once per outage.
func (s *sharedBudget) fail(ctx context.Context, c *Client, err error) {
	s.mu.Lock()
	s.downUntil = time.Now().Add(sharedBudgetRetry)
	s.mu.Unlock()
	if s.down.CompareAndSwap(false, true) {
		c.pacer.leaveShared()
		c.logger.LogAttrs(ctx, slog.LevelWarn, sharedBudgetDown, slog.String("error", redact(err)))
		c.metrics.sharedBudget.Add(ctx, 1, metric.WithAttributes(attribute.String("state", "down")))
	}
}

// recover records that the budget answers again: the pacer's rate is the
// deployment's again.
func (s *sharedBudget) recover(ctx context.Context, c *Client) {
	if s.down.CompareAndSwap(true, false) {
		c.pacer.rejoinShared()
		c.logger.LogAttrs(ctx, slog.LevelInfo, "the shared upstream budget answers again")
		c.metrics.sharedBudget.Add(ctx, 1, metric.WithAttributes(attribute.String("state", "up")))
	}
}

// redact keeps a budget's error message to one line, without what a URL
// with a password might put in it.
func redact(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "@"); i >= 0 {
		if j := strings.LastIndex(msg[:i], "//"); j >= 0 {
			msg = msg[:j+2] + "…" + msg[i:]
		}
	}
	return fmt.Sprintf("%.200s", msg)
}
