package ecdsim_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

var orders = []ecdsim.Order{ecdsim.OldestFirst, ecdsim.NewestFirst}

// pass is one pass through a desktop's records.
type pass struct {
	records []ecdsim.Record // in the order served
	totals  []int           // TotalCount of each page
}

// pagePass pages through a desktop's records with MaxResults n. Before
// each page after the first it calls between, if not nil, with the page
// count so far.
func pagePass(t testing.TB, sim *ecdsim.Simulator, clock *fakeClock, id string, n int, between func(pages int)) pass {
	t.Helper()
	var p pass
	token := ""
	for {
		if len(p.totals) > 0 && between != nil {
			between(len(p.totals))
		}
		q := params(id, "MaxResults", strconv.Itoa(n))
		if token != "" {
			q.Set("NextToken", token)
		}
		pg := mustPage(t, sim, call{key: longKey, ts: clock.Now(), params: q})
		p.records = append(p.records, pg.ImageModifiedRecords...)
		p.totals = append(p.totals, pg.TotalCount)
		if pg.next() == "" {
			return p
		}
		token = pg.next()
		if len(p.totals) > pg.TotalCount/n+2 {
			t.Fatalf("%s: %d pages of %d for %d records", id, len(p.totals), n, pg.TotalCount)
		}
	}
}

// served returns recs in the order the simulator serves them.
func served(order ecdsim.Order, recs []ecdsim.Record) []ecdsim.Record {
	if order == ecdsim.NewestFirst {
		recs = slices.Clone(recs)
		slices.Reverse(recs)
	}
	return recs
}

func TestOrdersPageEveryRecordOnce(t *testing.T) {
	t.Parallel()
	for _, order := range orders {
		for _, n := range []int{7, 100} {
			t.Run(fmt.Sprintf("%v_by_%d", order, n), func(t *testing.T) {
				t.Parallel()
				clock := newFakeClock(fixedNow)
				sim := newSim(t, ecdsim.Config{Seed: 12, Order: order, Now: clock.Now})
				for _, d := range sim.Desktops() {
					p := pagePass(t, sim, clock, d.ID, n, nil)
					want := served(order, sim.Records(d.ID, clock.Now()))
					if len(want) != d.Records || !slices.Equal(p.records, want) {
						t.Fatalf("%s: served %d records, want the %d of Records in %v order", d.ID, len(p.records), d.Records, order)
					}
					if wantPages := max(1, (d.Records+n-1)/n); len(p.totals) != wantPages {
						t.Fatalf("%s: %d pages, want %d", d.ID, len(p.totals), wantPages)
					}
					for k := 1; k < len(p.records); k++ {
						newer := p.records[k].UpdateTime > p.records[k-1].UpdateTime
						if newer != (order == ecdsim.OldestFirst) {
							t.Fatalf("%s: record %d (%s) after %s in %v order", d.ID, k, p.records[k].UpdateTime, p.records[k-1].UpdateTime, order)
						}
					}
				}
			})
		}
	}
}

func TestNewestFirstStuckToken(t *testing.T) {
	t.Parallel()
	sim := newSim(t, ecdsim.Config{Seed: 4, Order: ecdsim.NewestFirst, Desktops: []ecdsim.Desktop{{ID: "ecd-stuck", Records: 30, StuckToken: true}}})
	first := mustPage(t, sim, call{key: longKey, params: params("ecd-stuck")})
	want, _ := sim.Record("ecd-stuck", 29)
	if first.next() == "" || first.ImageModifiedRecords[0] != want {
		t.Fatalf("first page: token %q, first record %+v, want %+v", first.next(), first.ImageModifiedRecords[0], want)
	}
	for range 3 {
		if pg := mustPage(t, sim, call{key: longKey, params: params("ecd-stuck", "NextToken", first.next())}); pg.next() != first.next() {
			t.Fatalf("NextToken %q, want %q", pg.next(), first.next())
		}
	}
}

// liveConfig is the live mode of the live tests: changes about every 10 s,
// in progress 2 to 6 s, so a 1 s step sees every change in progress.
var liveConfig = ecdsim.Live{Every: 10 * time.Second, InProgress: 4 * time.Second, FailFraction: 0.3}

func TestLiveDesktopThroughTime(t *testing.T) {
	t.Parallel()
	for _, order := range orders {
		t.Run(order.String(), func(t *testing.T) {
			t.Parallel()
			clock := newFakeClock(fixedNow)
			desktops := []ecdsim.Desktop{
				{ID: "ecd-live", Records: 4, Live: true},
				{ID: "ecd-live-empty", Live: true},
				{ID: "ecd-still", Records: 6},
			}
			sim := newSim(t, ecdsim.Config{Seed: 5, Desktops: desktops, Now: clock.Now, Live: liveConfig, Order: order})
			start := clock.Now()
			const step, steps = time.Second, 300
			for _, d := range desktops {
				t.Run(d.ID, func(t *testing.T) {
					// Subtests share the clock: no t.Parallel.
					clock.Set(start)
					prev := sim.Records(d.ID, start)
					if len(prev) != d.Records {
						t.Fatalf("%d records at the start, want %d", len(prev), d.Records)
					}
					for i, r := range prev {
						if d.Live && r.Status == 0 {
							t.Fatalf("history record %d of a live desktop is in progress", i)
						}
					}
					seen := map[ecdsim.Change]bool{} // transitions seen, At zeroed
					for range steps {
						before := clock.Now()
						clock.Add(step)
						now := clock.Now()
						cur := sim.Records(d.ID, now)
						if got := pagePass(t, sim, clock, d.ID, 7, nil).records; !slices.Equal(got, served(order, cur)) {
							t.Fatalf("at %v: served records differ from Records", now)
						}
						checkStep(t, prev, cur, sim.Changes(d.ID, before, now), now, d.Live)
						for k, r := range cur {
							if k >= len(prev) || prev[k].Status != r.Status {
								seen[ecdsim.Change{Index: k, Status: r.Status}] = true
							}
						}
						prev = cur
					}
					all := sim.Changes(d.ID, start, clock.Now())
					if !d.Live {
						if all != nil || !slices.Equal(prev, sim.Records(d.ID, start)) {
							t.Fatalf("desktop that is not live changed: %d changes", len(all))
						}
						return
					}
					// Every transition was observed at some step, and nothing else.
					outcomes := map[int]int{}
					for _, c := range all {
						if !seen[ecdsim.Change{Index: c.Index, Status: c.Status}] {
							t.Errorf("transition %+v never seen", c)
						}
						outcomes[c.Status]++
					}
					if len(seen) != len(all) {
						t.Errorf("saw %d transitions, Changes lists %d", len(seen), len(all))
					}
					// 300 s with a change starting every 5 to 15 s.
					if outcomes[0] < 14 || outcomes[0] > 60 || outcomes[1] == 0 || outcomes[2] == 0 {
						t.Errorf("transitions by status %v over %v", outcomes, steps*step)
					}
				})
			}
		})
	}
}

// checkStep checks the records cur at now against the records prev one
// step earlier and the changes between them. A live desktop has at most
// one change in progress; one that is not live has the generator's status
// 0 in its history.
func checkStep(t *testing.T, prev, cur []ecdsim.Record, changes []ecdsim.Change, now time.Time, live bool) {
	t.Helper()
	want := slices.Clone(prev)
	for _, c := range changes {
		if c.At.After(now) {
			t.Fatalf("change %+v after %v", c, now)
		}
		at := c.At.Format("2006-01-02T15:04:05.000Z")
		switch {
		case c.Status == 0 && c.Index == len(want):
			want = append(want, cur[c.Index])
		case (c.Status == 1 || c.Status == 2) && c.Index < len(want) && want[c.Index].Status == 0:
			want[c.Index] = cur[c.Index]
		default:
			t.Fatalf("change %+v does not follow from %d records", c, len(want))
		}
		if r := cur[c.Index]; r.Status == c.Status && r.UpdateTime != at {
			t.Fatalf("record %d UpdateTime %s, change at %s", c.Index, r.UpdateTime, at)
		}
	}
	if !slices.Equal(want, cur) {
		t.Fatalf("at %v: records do not follow from the previous step and %d changes", now, len(changes))
	}
	inProgress := 0
	for k, r := range cur {
		if k < len(prev) && prev[k] != r {
			// Only 0 → 1 and 0 → 2, same change, new UpdateTime.
			p, q := prev[k], r
			if p.Status != 0 || q.Status == 0 || q.UpdateTime <= p.UpdateTime ||
				p.ImageID != q.ImageID || p.NewImageID != q.NewImageID || p.ImageName != q.ImageName || p.NewImageName != q.NewImageName {
				t.Fatalf("record %d went from %+v to %+v", k, p, q)
			}
		}
		if (r.Status == 2) != (r.Reason != "") {
			t.Fatalf("record %d: status %d with reason %q", k, r.Status, r.Reason)
		}
		if k > 0 && r.UpdateTime <= cur[k-1].UpdateTime {
			t.Fatalf("record %d UpdateTime %s not after %s", k, r.UpdateTime, cur[k-1].UpdateTime)
		}
		if r.Status == 0 {
			inProgress++
		}
	}
	if live && inProgress > 1 {
		t.Fatalf("at %v: %d changes in progress", now, inProgress)
	}
}

func TestLiveIsDeterministic(t *testing.T) {
	t.Parallel()
	desktops := []ecdsim.Desktop{{ID: "ecd-live", Records: 3, Live: true}}
	newLive := func(seed int64) (*ecdsim.Simulator, *fakeClock) {
		clock := newFakeClock(fixedNow)
		return newSim(t, ecdsim.Config{Seed: seed, Desktops: desktops, Now: clock.Now, Live: liveConfig}), clock
	}
	end := fixedNow.Add(time.Hour)
	a, clockA := newLive(9)
	b, _ := newLive(9)
	c, _ := newLive(10)

	// a is asked step by step, b only at the end: the same records.
	for clockA.Now().Before(end) {
		clockA.Add(7 * time.Second)
		a.Records("ecd-live", clockA.Now())
	}
	if ra, rb := a.Records("ecd-live", end), b.Records("ecd-live", end); !slices.Equal(ra, rb) || len(ra) < 100 {
		t.Fatalf("same seed: %d and %d records an hour on", len(ra), len(rb))
	}
	all := a.Changes("ecd-live", fixedNow, end)
	if !slices.Equal(all, b.Changes("ecd-live", fixedNow, end)) {
		t.Fatal("same seed, different changes")
	}
	if slices.Equal(all, c.Changes("ecd-live", fixedNow, end)) {
		t.Fatal("different seeds, same changes")
	}
	// Changes over consecutive spans add up to the changes over their union.
	mid := fixedNow.Add(1234567 * time.Millisecond)
	if split := append(a.Changes("ecd-live", fixedNow, mid), a.Changes("ecd-live", mid, end)...); !slices.Equal(split, all) {
		t.Fatal("Changes over two spans differ from Changes over their union")
	}
}

func TestLiveStartsAfterHistory(t *testing.T) {
	t.Parallel()
	// 3,000,000 records at 37 s apart end in 2025, after fixedNow.
	const n = 3_000_000
	clock := newFakeClock(fixedNow)
	sim := newSim(t, ecdsim.Config{Seed: 2, Desktops: []ecdsim.Desktop{{ID: "ecd-long", Records: n, Live: true}}, Now: clock.Now, Live: liveConfig})
	last, _ := sim.Record("ecd-long", n-1)
	lastAt, err := time.Parse(time.RFC3339Nano, last.UpdateTime)
	if err != nil || !lastAt.After(fixedNow) {
		t.Fatalf("last history record at %s (%v), want after %v", last.UpdateTime, err, fixedNow)
	}
	if got := sim.Changes("ecd-long", fixedNow, lastAt); len(got) != 0 {
		t.Fatalf("%d changes before the last history record", len(got))
	}
	clock.Set(lastAt.Add(time.Hour))
	changes := sim.Changes("ecd-long", lastAt, clock.Now())
	if len(changes) == 0 || changes[0].Index != n || !changes[0].At.After(lastAt) {
		t.Fatalf("first change %+v, want record %d after %v", changes, n, lastAt)
	}
	if _, ok := sim.Record("ecd-long", n); !ok {
		t.Fatal("the first change's record is not served")
	}
}

func TestLiveRecordAddedWhilePaging(t *testing.T) {
	t.Parallel()
	const history = 20
	for _, order := range orders {
		t.Run(order.String(), func(t *testing.T) {
			t.Parallel()
			clock := newFakeClock(fixedNow)
			sim := newSim(t, ecdsim.Config{Seed: 3, Order: order, Now: clock.Now, Live: liveConfig,
				Desktops: []ecdsim.Desktop{{ID: "ecd-live", Records: history, Live: true}}})
			first := sim.Changes("ecd-live", fixedNow, fixedNow.Add(time.Hour))[0]
			if first.Status != 0 || first.Index != history {
				t.Fatalf("first change %+v", first)
			}
			before := first.At.Add(-time.Millisecond)
			clock.Set(before)
			// The record starts between the first and the second page.
			p := pagePass(t, sim, clock, "ecd-live", 5, func(pages int) {
				if pages == 1 {
					clock.Set(first.At)
				}
			})
			if p.totals[0] != history || p.totals[len(p.totals)-1] != history+1 {
				t.Fatalf("TotalCounts %v, want %d then %d", p.totals, history, history+1)
			}
			var want []ecdsim.Record
			switch order {
			case ecdsim.OldestFirst:
				// Positions count from the oldest: the new record comes last,
				// on a fifth page the fourth one's NextToken leads to.
				want = sim.Records("ecd-live", first.At)
			case ecdsim.NewestFirst:
				// The pass goes on from where it was: the new record is not
				// seen, and none is repeated.
				want = served(order, sim.Records("ecd-live", before))
			}
			if !slices.Equal(p.records, want) {
				t.Fatalf("served %d records in %d pages, want %d", len(p.records), len(p.totals), len(want))
			}
		})
	}
}

// TestLiveConcurrentRequests has goroutines page a live desktop while the
// clock moves, for the race detector, and checks that TotalCount never
// goes down for any one goroutine.
func TestLiveConcurrentRequests(t *testing.T) {
	t.Parallel()
	clock := newFakeClock(fixedNow)
	sim := newSim(t, ecdsim.Config{Seed: 6, Now: clock.Now, Live: liveConfig, Quota: ecdsim.Quota{QPS: 1e6},
		Desktops: []ecdsim.Desktop{{ID: "ecd-live", Records: 3, Live: true}}})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			last := 0
			for range 50 {
				clock.Add(500 * time.Millisecond)
				w := serve(sim, call{key: longKey, ts: clock.Now(), params: params("ecd-live", "MaxResults", "100")}.request(t))
				var pg page
				if err := json.Unmarshal(w.Body.Bytes(), &pg); err != nil || w.Code != 200 || pg.TotalCount < last {
					t.Errorf("status %d, TotalCount %d after %d, err %v", w.Code, pg.TotalCount, last, err)
					return
				}
				last = pg.TotalCount
			}
		})
	}
	wg.Wait()
	if n := len(sim.Records("ecd-live", clock.Now())); n < 3+10 {
		t.Fatalf("%d records after %v", n, 400*500*time.Millisecond)
	}
}
