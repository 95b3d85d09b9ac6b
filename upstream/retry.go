package upstream

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"time"
)

// Retrying is three separate questions, each answered by its own piece:
//
//   - Is this failure worth another attempt, and of what kind? [classify]
//   - How long to wait before it? [RetryPolicy.Backoff], at least the
//     upstream's own throttling hint.
//   - May the client spend a retry now? The [RetryBudget], shared by every
//     call of a client.
//
// The client's call loop (client.go) puts them together.

// retryClass is what a failed attempt means for the next one.
type retryClass int

const (
	// noRetry: another attempt would get the same answer (a parameter,
	// permission or malformed-answer error), or the failure is not the
	// upstream's (no credentials, the caller gave up).
	noRetry retryClass = iota
	// retryThrottled: the upstream asks the gateway to slow down.
	retryThrottled
	// retryTransient: the upstream or the network failed for now (5xx,
	// ServiceUnavailable, InternalError, a network error, an attempt that
	// timed out).
	retryTransient
	// retryOnce: the next attempt differs by itself: it is signed with a
	// fresh nonce (after SignatureNonceUsed) and with freshly fetched
	// credentials (after an expired STS token). One retry per call, at
	// once.
	retryOnce
)

// classify answers "is this retryable": err is what an attempt returned.
func classify(err error) retryClass {
	if apiErr, ok := errors.AsType[*APIError](err); ok {
		switch apiErr.Kind() {
		case KindThrottled:
			return retryThrottled
		case KindUnavailable:
			return retryTransient
		}
		if apiErr.Code == "SignatureNonceUsed" || strings.HasPrefix(apiErr.Code, "InvalidSecurityToken.Expired") {
			return retryOnce
		}
		return noRetry
	}
	if _, ok := errors.AsType[*networkError](err); ok {
		// An attempt's own timeout is a network error too; the caller's
		// context ending is checked by the call loop.
		return retryTransient
	}
	return noRetry
}

// RetryPolicy bounds and spaces the retries of failures other than
// throttling (which the [Pacer] and [WithMaxWait] handle): at most
// MaxAttempts failed attempts per call, with capped exponential backoff and
// full jitter between them. Every attempt is signed anew, with a fresh
// nonce and freshly fetched credentials.
type RetryPolicy struct {
	// MaxAttempts bounds the failed attempts per call that were not
	// throttled; 1 disables their retries.
	MaxAttempts int
	// BaseDelay is the backoff cap of the first retry.
	BaseDelay time.Duration
	// MaxDelay caps every backoff.
	MaxDelay time.Duration
}

// DefaultRetryPolicy returns 4 attempts with backoff capped at 100 ms,
// 200 ms, 400 ms (and 2 s beyond): a failing page costs at most 0.7 s of
// backoff.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{MaxAttempts: 4, BaseDelay: 100 * time.Millisecond, MaxDelay: 2 * time.Second}
}

// Backoff answers "how long to wait" before the retry that follows
// attempt (1-based): a delay drawn uniformly from zero to
// min(MaxDelay, BaseDelay·2^(attempt-1)).
func (p RetryPolicy) Backoff(attempt int) time.Duration {
	ceiling := p.BaseDelay << (attempt - 1)
	if ceiling > p.MaxDelay || ceiling <= 0 {
		ceiling = p.MaxDelay
	}
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling + 1)
}

// fitsDeadline reports whether a wait of d leaves time before ctx's
// deadline for the attempt that follows it.
func fitsDeadline(ctx context.Context, d time.Duration) bool {
	deadline, ok := ctx.Deadline()
	return !ok || time.Until(deadline) > d
}
