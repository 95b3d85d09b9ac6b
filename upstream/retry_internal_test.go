package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// The three retry pieces, each on its own: classify, Backoff, RetryBudget.

func TestClassify(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		err  error
		want retryClass
	}{
		{&APIError{HTTPStatus: 400, Code: "Throttling.User"}, retryThrottled},
		{&APIError{HTTPStatus: 403, Code: "Throttling"}, retryThrottled},
		{&APIError{HTTPStatus: 400, Code: "Throttling.Api"}, retryThrottled},
		{&APIError{HTTPStatus: http.StatusTooManyRequests}, retryThrottled},
		{&APIError{HTTPStatus: 503, Code: "ServiceUnavailable"}, retryTransient},
		{&APIError{HTTPStatus: 500, Code: "InternalError"}, retryTransient},
		{&APIError{HTTPStatus: 502}, retryTransient},
		{&networkError{err: errors.New("connection reset")}, retryTransient},
		{fmt.Errorf("wrapped: %w", &networkError{err: errAttemptTimeout}), retryTransient},
		{&APIError{HTTPStatus: 400, Code: "SignatureNonceUsed"}, retryOnce},
		{&APIError{HTTPStatus: 400, Code: "InvalidSecurityToken.Expired"}, retryOnce},
		{&APIError{HTTPStatus: 400, Code: "InvalidSecurityToken.Malformed"}, noRetry},
		{&APIError{HTTPStatus: 400, Code: "SignatureDoesNotMatch"}, noRetry},
		{&APIError{HTTPStatus: 404, Code: "InvalidDesktopId.NotFound"}, noRetry},
		{&APIError{HTTPStatus: 403, Code: "Forbidden.RAM"}, noRetry},
		{&APIError{HTTPStatus: 400, Code: "InvalidParameter"}, noRetry},
		{fmt.Errorf("%w: truncated", ErrMalformedResponse), noRetry},
		{fmt.Errorf("%w: none in the chain", ErrNoCredentials), noRetry},
		{context.Canceled, noRetry},
		{context.DeadlineExceeded, noRetry},
	}
	for _, tc := range testCases {
		if got := classify(tc.err); got != tc.want {
			t.Errorf("classify(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestBackoffIsCappedExponentialWithFullJitter(t *testing.T) {
	t.Parallel()
	p := DefaultRetryPolicy()
	for attempt, ceiling := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond, 6: 2 * time.Second, 40: 2 * time.Second} {
		var low, high bool
		for range 2000 {
			d := p.Backoff(attempt)
			if d < 0 || d > ceiling {
				t.Fatalf("attempt %d: backoff %v outside 0..%v", attempt, d, ceiling)
			}
			low = low || d < ceiling/4
			high = high || d > ceiling*3/4
		}
		if !low || !high {
			t.Errorf("attempt %d: 2000 draws never below %v or never above %v: not uniform over 0..%v", attempt, ceiling/4, ceiling*3/4, ceiling)
		}
	}
	if d := (RetryPolicy{MaxAttempts: 3}).Backoff(1); d != 0 {
		t.Errorf("a zero policy waits %v", d)
	}
}

func TestRetryBudget(t *testing.T) {
	t.Parallel()
	b := NewRetryBudget(0.1, 20)
	for i := range 20 {
		if !b.withdraw() {
			t.Fatalf("retry %d refused from a full budget of 20", i+1)
		}
	}
	if b.withdraw() {
		t.Fatal("a retry past the budget was granted")
	}
	for range 9 {
		b.onCall()
	}
	if b.withdraw() {
		t.Fatal("nine calls (0.9 tokens) paid for a retry")
	}
	b.onCall()
	if !b.withdraw() {
		t.Fatal("ten calls (1 token) did not pay for a retry")
	}
	b.onSuccess()
	if !b.withdraw() || b.withdraw() {
		t.Fatal("one success must pay for exactly one retry")
	}
	for range 100 {
		b.onSuccess()
	}
	n := 0
	for b.withdraw() {
		n++
	}
	if n != 20 {
		t.Errorf("after 100 successes the budget held %d retries, want its capacity 20", n)
	}
	var none *RetryBudget // no budget: every retry the policy allows
	none.onCall()
	none.onSuccess()
	if !none.withdraw() {
		t.Error("a nil budget refused a retry")
	}
}
