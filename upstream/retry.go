package upstream

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// RetryPolicy says how a failed attempt is retried: with capped exponential
// backoff and full jitter (a delay drawn uniformly from zero to
// min(MaxDelay, BaseDelay·2^(attempt-1))), only for throttling, transient
// upstream faults and network errors, never for a parameter or permission
// error, never once the caller's context is done, and never when the delay
// would end past the caller's deadline. When a throttling answer says how
// long to wait (the x-ratelimit TimeLeft hint), the delay is at least that,
// and no retry is made when the hint exceeds MaxDelay. Every attempt is signed anew, with
// a fresh nonce and freshly fetched credentials.
type RetryPolicy struct {
	// MaxAttempts bounds the attempts per call, the first included; 1
	// disables retries.
	MaxAttempts int
	// BaseDelay is the backoff cap of the first retry.
	BaseDelay time.Duration
	// MaxDelay caps every backoff.
	MaxDelay time.Duration
}

// DefaultRetryPolicy returns 4 attempts with backoff capped at 100 ms,
// 200 ms, 400 ms: a throttled page costs at most 0.7 s of waiting.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{MaxAttempts: 4, BaseDelay: 100 * time.Millisecond, MaxDelay: 2 * time.Second}
}

// decide says whether to retry after err on the given attempt, and after
// how long. onceOnly counts retries granted to codes that deserve exactly
// one (a used nonce, an expired STS token).
func (p RetryPolicy) decide(ctx context.Context, err error, attempt int, onceOnly *int) (time.Duration, bool) {
	if attempt >= p.MaxAttempts || ctx.Err() != nil {
		return 0, false
	}
	var hint time.Duration
	var apiErr *APIError
	var netErr *networkError
	switch {
	case errors.As(err, &apiErr):
		if !apiErr.retryable() {
			return 0, false
		}
		if k := apiErr.Kind(); k != KindThrottled && k != KindUnavailable {
			if *onceOnly > 0 {
				return 0, false
			}
			*onceOnly++
			return 0, true
		}
		if h, ok := apiErr.ThrottlingHint(); ok {
			if h > p.MaxDelay {
				return 0, false // the caller learns the wait from RetryInfo
			}
			hint = h
		}
	case errors.As(err, &netErr):
		// The caller's context is live (checked above), so a deadline
		// error here is the attempt's own timeout: worth another try.
	default:
		return 0, false
	}
	delay := max(p.backoff(attempt), hint)
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= delay {
		return 0, false
	}
	return delay, true
}

func (p RetryPolicy) backoff(attempt int) time.Duration {
	ceiling := p.BaseDelay << (attempt - 1)
	if ceiling > p.MaxDelay || ceiling <= 0 {
		ceiling = p.MaxDelay
	}
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling + 1)
}
