package upstream

import (
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
)

// WithRateLimit paces every upstream attempt of the client, retries
// included, with one [Pacer] whose rate never exceeds qps calls per second
// (burst at most at once) and adapts to throttling below it, so that all
// the gateway's callers together stay within the account's quota. An
// attempt waits for its turn; if its context would end first, it fails at
// once with [ErrPacingDeadline]. qps <= 0 sets no ceiling: calls are not
// spaced until the upstream throttles. Default: [NewPacer](0, 1).
func WithRateLimit(qps float64, burst int) Option {
	return func(c *Client) { c.pacer = NewPacer(qps, burst) }
}

// WithMaxWait bounds how long one page may wait for quota: throttled
// attempts are retried, paced, until the caller's deadline or until the
// page has waited d, and then fail with the last throttling error; d <= 0
// does not retry throttling at all. Default: [DefaultMaxWait].
func WithMaxWait(d time.Duration) Option {
	return func(c *Client) { c.maxWait = d }
}

// DefaultMaxWait is how long one page may wait for quota by default: far
// longer than the few seconds pacing takes to settle on a busy account's
// quota, short enough that an account whose quota is gone for good (used
// up by another application, or zero) surfaces as an error within half a
// minute instead of holding callers that set no deadline.
const DefaultMaxWait = 30 * time.Second

// WithAttemptTimeout bounds one attempt — connecting, sending, and reading
// the whole answer — so that a stalled or slow-dripping upstream costs a
// retry, not the caller's whole deadline. 0 disables it. Default:
// [DefaultAttemptTimeout].
func WithAttemptTimeout(d time.Duration) Option {
	return func(c *Client) { c.attemptTimeout = d }
}

// DefaultAttemptTimeout is the default bound of one upstream attempt.
const DefaultAttemptTimeout = 10 * time.Second

// WithRetryBudget sets the retry budget shared by every call of the
// client. Default: [NewRetryBudget](0.1, 20). nil disables the budget
// (every retry the policy allows is made).
func WithRetryBudget(b *RetryBudget) Option {
	return func(c *Client) { c.budget = b }
}

// RetryBudget bounds the extra load retries put on a failing upstream.
// Every call deposits ratio tokens and every successful attempt one token;
// every retry withdraws one, and is not made when none is left. While the
// upstream answers mostly successfully, the successes pay for the retries
// (a 50% throttling rate is retried away); when it fails persistently, only
// the per-call deposits remain, so retries settle at ratio of the calls
// (plus the initial reserve). It is safe for concurrent use.
type RetryBudget struct {
	mu sync.Mutex
	// Amounts are in thousandths of a retry, so that ten deposits of a
	// ratio of 0.1 add up to exactly one retry.
	ratio    int64
	capacity int64
	tokens   int64
}

// retryUnit is one retry in the budget's units.
const retryUnit = 1000

// NewRetryBudget returns a budget that grants ratio retries per call under
// persistent failure (to a thousandth) and holds at most capacity retries,
// starting full.
func NewRetryBudget(ratio float64, capacity int) *RetryBudget {
	c := int64(capacity) * retryUnit
	return &RetryBudget{ratio: int64(math.Round(ratio * retryUnit)), capacity: c, tokens: c}
}

func (b *RetryBudget) deposit(n int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.tokens = min(b.capacity, b.tokens+n)
	b.mu.Unlock()
}

// onCall records a new call.
func (b *RetryBudget) onCall() {
	if b != nil {
		b.deposit(b.ratio)
	}
}

// onSuccess records a successful attempt.
func (b *RetryBudget) onSuccess() { b.deposit(retryUnit) }

// withdraw takes the token of one retry, and reports whether there was one.
func (b *RetryBudget) withdraw() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tokens < retryUnit {
		return false
	}
	b.tokens -= retryUnit
	return true
}

// throttlingHint parses the TimeLeft field (milliseconds, as the official
// SDKs read it) of an x-ratelimit-user-api or x-ratelimit-user header value
// such as "Limit:100,Remain:0,TimeLeft:2000,Reset:1700000000".
func throttlingHint(header string) (time.Duration, bool) {
	for field := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(field, ":")
		if !ok || strings.TrimSpace(k) != "TimeLeft" {
			continue
		}
		ms, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || ms < 0 || ms > int64(time.Hour/time.Millisecond) {
			return 0, false
		}
		return time.Duration(ms) * time.Millisecond, true
	}
	return 0, false
}

// ThrottlingHint returns how long the upstream asked to wait before the
// next call, from the x-ratelimit TimeLeft field of a throttling answer.
func (e *APIError) ThrottlingHint() (time.Duration, bool) {
	return throttlingHint(e.RetryAfter)
}
