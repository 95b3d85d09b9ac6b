package service

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/imagerecords/imagerecords/upstream"
)

// change is a record of an image change at minute m of a test's timeline.
func change(status int, minute int, from, to string) upstream.Record {
	r := upstream.Record{Status: status, UpdateTime: time.Date(2026, 1, 1, 0, minute, 0, 0, time.UTC), ImageID: from, NewImageID: to}
	if status == 2 {
		r.Reason = "disk full"
	}
	return r
}

// shuffled is records in a random order: the upstream documents none.
func shuffled(rng *rand.Rand, records []upstream.Record) []upstream.Record {
	out := slices.Clone(records)
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// described names events for a comparison: kind, status, images, minute.
func described(events []watchEvent) []string {
	out := make([]string, len(events))
	for i, e := range events {
		kind := "added"
		if e.kind == eventSettled {
			kind = "settled"
		}
		out[i] = fmt.Sprintf("%s %d %s→%s @%d", kind, e.record.Status, e.record.ImageID, e.record.NewImageID, e.record.UpdateTime.Minute())
	}
	return out
}

func TestWatchDiffIgnoresOrderAndDuplicates(t *testing.T) {
	t.Parallel()
	history := []upstream.Record{change(1, 1, "m-a", "m-b"), change(2, 2, "m-b", "m-c"), change(1, 3, "m-b", "m-d")}
	testCases := []struct {
		name       string
		prev, next []upstream.Record
		want       []string
	}{
		{"nothing new", history, history, nil},
		{"a change starts", history, append(slices.Clone(history), change(0, 5, "m-d", "m-e")), []string{"added 0 m-d→m-e @5"}},
		{
			"a change settles, its update_time moves",
			append(slices.Clone(history), change(0, 5, "m-d", "m-e")),
			append(slices.Clone(history), change(2, 9, "m-d", "m-e")),
			[]string{"settled 2 m-d→m-e @9"},
		},
		{
			"a change starts and settles between polls, another starts",
			history,
			append(slices.Clone(history), change(1, 6, "m-d", "m-e"), change(0, 8, "m-e", "m-d")),
			[]string{"added 1 m-d→m-e @6", "added 0 m-e→m-d @8"},
		},
		{
			"one settles, the same images start again",
			append(slices.Clone(history), change(0, 5, "m-d", "m-e")),
			append(slices.Clone(history), change(1, 6, "m-d", "m-e"), change(0, 8, "m-d", "m-e")),
			[]string{"settled 1 m-d→m-e @6", "added 0 m-d→m-e @8"},
		},
		{
			"a change in progress whose update_time moves is no event",
			append(slices.Clone(history), change(0, 5, "m-d", "m-e")),
			append(slices.Clone(history), change(0, 7, "m-d", "m-e")),
			nil,
		},
		{
			"a record the pages repeat is one record",
			history,
			append(slices.Clone(history), history[1], change(1, 4, "m-d", "m-a"), change(1, 4, "m-d", "m-a")),
			[]string{"added 1 m-d→m-a @4"},
		},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			for range 20 { // any order of the records on either side
				prev := newWatchView(shuffled(rng, tc.prev), time.Time{})
				next := newWatchView(shuffled(rng, tc.next), time.Time{})
				if got := described(diffViews(prev, next)); !slices.Equal(got, tc.want) {
					t.Fatalf("diffViews = %q, want %q", got, tc.want)
				}
				// A watcher that knew prev and catches up from its cursor
				// learns the same, except that it cannot tell a repeated
				// record's second sighting from its first either.
				c := cursorOf(prev)
				if got := described(c.events(next)); !slices.Equal(got, tc.want) {
					t.Fatalf("cursor events = %q, want %q", got, tc.want)
				}
				// Told those events, it knows next.
				for _, e := range c.events(next) {
					c.apply(e)
				}
				if got := c.events(next); len(got) != 0 {
					t.Fatalf("after the events the cursor still lacks %q", described(got))
				}
				tok := encodeWatchCursor(fleetKeys, "cn-hangzhou", "ecd-a", c)
				back, err := decodeWatchCursor(fleetKeys, "cn-hangzhou", "ecd-a", tok)
				if err != nil || encodeWatchCursor(fleetKeys, "cn-hangzhou", "ecd-a", back) != tok {
					t.Fatalf("cursor round trip: %v", err)
				}
			}
		})
	}
}

func TestWatchCursorCutInsideABatch(t *testing.T) {
	t.Parallel()
	prev := newWatchView([]upstream.Record{change(1, 1, "m-a", "m-b"), change(0, 2, "m-b", "m-c")}, time.Time{})
	next := newWatchView([]upstream.Record{change(1, 1, "m-a", "m-b"), change(1, 3, "m-b", "m-c"),
		change(1, 3, "m-c", "m-d"), change(0, 4, "m-d", "m-e")}, time.Time{})
	events := diffViews(prev, next)
	if len(events) != 3 {
		t.Fatalf("%d events: %q", len(events), described(events))
	}
	// Cut after each event: the cursor then yields exactly the rest.
	for cut := range len(events) + 1 {
		c := cursorOf(prev)
		for _, e := range events[:cut] {
			c.apply(e)
		}
		tok := encodeWatchCursor(fleetKeys, "cn-hangzhou", "ecd-a", c)
		c, err := decodeWatchCursor(fleetKeys, "cn-hangzhou", "ecd-a", tok)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := described(c.events(next)), described(events[cut:]); !slices.Equal(got, want) {
			t.Fatalf("cut after %d events: the cursor yields %q, want %q", cut, got, want)
		}
	}
}

func TestDecodeWatchCursorRejectsJunk(t *testing.T) {
	t.Parallel()
	c := cursorOf(newWatchView([]upstream.Record{change(0, 2, "m-b", "m-c"), change(1, 2, "m-a", "m-b")}, time.Time{}))
	good := encodeWatchCursor(fleetKeys, "cn-hangzhou", "ecd-a", c)
	unsorted := c.clone()
	slices.Reverse(unsorted.atMark)
	for name, tok := range map[string]string{
		"junk":            "junk!",
		"another desktop": encodeWatchCursor(fleetKeys, "cn-hangzhou", "ecd-b", c),
		"a page token":    fleetKeys.sealCursor("cn-hangzhou", "ecd-a", upstream.Cursor{Token: "x"}),
		"unsorted keys":   encodeWatchCursor(fleetKeys, "cn-hangzhou", "ecd-a", unsorted),
		"truncated":       good[:len(good)-2],
	} {
		if _, err := decodeWatchCursor(fleetKeys, "cn-hangzhou", "ecd-a", tok); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
