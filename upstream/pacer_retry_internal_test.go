package upstream

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestPacerRetryKeepsItsCallersTurn: the retry of a call that has had its
// turn waits at the head of its caller's queue, not behind the caller's
// hundred other calls, while another caller still gets its turn.
func TestPacerRetryKeepsItsCallersTurn(t *testing.T) {
	t.Parallel()
	w := newQuotaWorld(1e9, 1e9)
	p := newPacer(10, 1, w)
	p.rate, p.tat = 10, w.now
	var order []string
	for i := range 100 {
		if _, ok := p.enqueue("flood", time.Time{}, func(time.Time) { order = append(order, fmt.Sprintf("flood-%d", i)) }); !ok {
			t.Fatal("refused without a deadline")
		}
	}
	if _, ok := p.enqueue("quiet", time.Time{}, func(time.Time) { order = append(order, "quiet") }); !ok {
		t.Fatal("refused without a deadline")
	}
	if _, ok := p.enqueueAt("flood", time.Time{}, true, func(time.Time) { order = append(order, "flood-retry") }); !ok {
		t.Fatal("refused without a deadline")
	}
	w.run(time.Second)
	if i := slices.Index(order, "flood-retry"); i < 0 || i > 3 {
		t.Errorf("the flood's retry went %dth (0: not within a second; first slots %q): want within its caller's next turn, not behind its 99 other calls", i+1, order[:min(len(order), 6)])
	}
	if i := slices.Index(order, "quiet"); i < 0 || i > 3 {
		t.Errorf("the quiet caller's call went %dth (0: not within a second; first slots %q): a retry must not take the other callers' turns", i+1, order[:min(len(order), 6)])
	}
}
