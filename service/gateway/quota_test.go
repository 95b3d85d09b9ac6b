package gateway_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// Living within the account's quota, end to end: a simulated account with
// a quota of 50 calls/s (burst 10) and 10 ms per call, gateway replicas at
// their default flags (--upstream-qps 100, which is above the quota), and
// 30 streams of 2,000 records each spread over them. The quota floor is
// 600 pages ÷ 50/s = 12 s.
//
// What these tests hold to the letter is what the gateway promises: every
// record of every stream, exactly once, in order, at default flags. The
// issue's efficiency targets (within 1.25× the floor and 15% throttled
// alone, 1.10× and 3% with one budget in Redis) are asserted where they
// can be measured without noise, on the fake clock of
// upstream/pacer_test.go (TestPacersConvergeOnTheQuota,
// TestSharedPacersConvergeOnTheQuota), and measured end to end by bench
// scenario 10 (go run ./cmd/imagerecords-bench -scenarios 10). Here, 13 s
// of wall clock on a shared 2-core machine that runs other packages' tests
// at the same time varies by ±10% with its load (a run at 1.26× and one at
// 1.04× of the same code), so the bounds below are the targets with that
// margin: still far below what a gateway that does not adapt does
// (half the calls throttled, most streams failed).

const (
	quotaQPS      = 50
	quotaBurst    = 10
	quotaStreams  = 30
	quotaRecords  = 2000
	quotaLatency  = 10 * time.Millisecond
	quotaPages    = quotaStreams * quotaRecords / 100
	quotaFloorSec = float64(quotaPages) / quotaQPS
)

// quotaRun is what one run of the quota scenario measured.
type quotaRun struct {
	wall      time.Duration
	calls     int64 // upstream requests answered
	throttled int64
}

func (r quotaRun) String() string {
	return fmt.Sprintf("wall %.2f s (%.2f× the %.0f s floor), %d upstream calls, %d throttled (%.1f%%)",
		r.wall.Seconds(), r.wall.Seconds()/quotaFloorSec, quotaFloorSec, r.calls, r.throttled, 100*float64(r.throttled)/float64(r.calls))
}

// runQuotaScenario streams every desktop once, desktop i through replica
// i mod len(replicas), checks every record arrived exactly once and in
// order, and returns the figures. midway, when not nil, runs once when
// half of all records have arrived.
func runQuotaScenario(t *testing.T, sim *ecdsim.Simulator, replicas []*gatewaytest.Stack, midway func()) quotaRun {
	t.Helper()
	before := sim.Stats()
	start := time.Now()
	var wg sync.WaitGroup
	var delivered atomic.Int64
	var once sync.Once
	errs := make([]error, quotaStreams)
	for i := range quotaStreams {
		wg.Go(func() {
			desktop := fmt.Sprintf("ecd-quota%010d", i)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			stream, err := replicas[i%len(replicas)].Client(connect.WithGRPC()).StreamImageModifiedRecords(ctx,
				connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: desktop}))
			if err != nil {
				errs[i] = fmt.Errorf("stream %d: %w", i, err)
				return
			}
			defer stream.Close()
			var msgs []*gatewaytest.StreamMessage
			for stream.Receive() {
				msgs = append(msgs, stream.Msg())
				n := delivered.Add(int64(len(stream.Msg().GetRecords())))
				if midway != nil && n >= quotaStreams*quotaRecords/2 {
					once.Do(midway)
				}
			}
			if err := stream.Err(); err != nil {
				errs[i] = fmt.Errorf("stream %d: %w", i, err)
				return
			}
			records := gatewaytest.RecordsOf(msgs)
			if len(records) != quotaRecords {
				errs[i] = fmt.Errorf("stream %d: %d records, want %d", i, len(records), quotaRecords)
				return
			}
			for j, r := range records {
				want, _ := sim.Record(desktop, j)
				if r.GetImageId() != want.ImageID || r.GetNewImageId() != want.NewImageID {
					errs[i] = fmt.Errorf("stream %d: record %d is not the simulator's record %d", i, j, j)
					return
				}
			}
		})
	}
	wg.Wait()
	run := quotaRun{wall: time.Since(start)}
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	after := sim.Stats()
	run.calls = after.Requests - before.Requests
	run.throttled = after.QuotaThrottled - before.QuotaThrottled
	return run
}

func quotaSimulator(t *testing.T) (*ecdsim.Simulator, string) {
	desktops := make([]ecdsim.Desktop, quotaStreams)
	for i := range desktops {
		desktops[i] = ecdsim.Desktop{ID: fmt.Sprintf("ecd-quota%010d", i), Records: quotaRecords}
	}
	return gatewaytest.Simulator(t, ecdsim.Config{
		Desktops: desktops,
		Faults:   ecdsim.Faults{Latency: quotaLatency},
		Quota:    ecdsim.Quota{QPS: quotaQPS, Burst: quotaBurst},
	})
}

// TestReplicasLiveWithinTheQuota: three replicas at default flags, which
// know nothing of each other, deliver every record of every stream within
// 1.25× the quota floor (1.5× on a loaded machine), with at most 15% of
// upstream calls throttled (20%).
func TestReplicasLiveWithinTheQuota(t *testing.T) {
	sim, url := quotaSimulator(t)
	replicas, _ := quotaReplicas(t, url)
	run := runQuotaScenario(t, sim, replicas, nil)
	t.Logf("3 replicas, no coordination: %v", run)
	run.check(t, 1.5, 0.20)
}

// quotaReplicas starts three gateway replicas at default flags plus args,
// facing the upstream at url, and returns them with their logs.
func quotaReplicas(t *testing.T, url string, args ...string) ([]*gatewaytest.Stack, []*gatewaytest.Output) {
	var replicas []*gatewaytest.Stack
	var logs []*gatewaytest.Output
	for range 3 {
		out := &gatewaytest.Output{}
		logs = append(logs, out)
		replicas = append(replicas, gatewaytest.New(t, gatewaytest.Config{Upstream: url, Args: args, Logs: out}))
	}
	return replicas, logs
}

// check fails t when the run took longer than maxWall × the quota floor or
// had more than maxThrottled of its upstream calls throttled. The wall
// time is not held under the race detector (go test -race in .ci/run runs
// these tests too, for their races): it slows the three gateways, the
// simulator and the clients several times over on two cores (1.36× and
// 1.85× the floor measured), and .ci/run's plain go test holds the bound.
func (r quotaRun) check(t *testing.T, maxWall, maxThrottled float64) {
	t.Helper()
	if limit := maxWall * quotaFloorSec; r.wall.Seconds() > limit && !raceDetector {
		t.Errorf("wall %.2f s, want at most %.2f s (%.2f× the floor)", r.wall.Seconds(), limit, maxWall)
	}
	if share := float64(r.throttled) / float64(r.calls); share > maxThrottled {
		t.Errorf("%.1f%% of upstream calls throttled, want at most %.0f%%", 100*share, 100*maxThrottled)
	}
}

// TestReplicasShareOneBudgetInRedis: the same three replicas at default
// flags plus --quota-redis on a real redis-server take their calls from one
// budget, and stay within 1.10× the quota floor (1.3× on a loaded
// machine) with at most 3% of upstream calls throttled (6%: a budget that
// is not shared throttles 8-15%).
func TestReplicasShareOneBudgetInRedis(t *testing.T) {
	redis := gatewaytest.Redis(t)
	sim, url := quotaSimulator(t)
	replicas, _ := quotaReplicas(t, url, "--quota-redis", redis.URL)
	run := runQuotaScenario(t, sim, replicas, nil)
	t.Logf("3 replicas, one budget in Redis: %v", run)
	run.check(t, 1.3, 0.06)
}

// TestRedisDownMidRunLosesNothing: Redis dies when half the records have
// arrived; every replica goes on pacing alone, at its share of the
// deployment's rate, says so once in its log, and every stream still
// delivers every record exactly once. At most 10% of the upstream calls
// are throttled (3-4% measured; 16% when each replica went on at the
// whole deployment's rate).
func TestRedisDownMidRunLosesNothing(t *testing.T) {
	redis := gatewaytest.Redis(t)
	sim, url := quotaSimulator(t)
	replicas, logs := quotaReplicas(t, url, "--quota-redis", redis.URL)
	run := runQuotaScenario(t, sim, replicas, redis.Stop)
	t.Logf("3 replicas, Redis killed midway: %v", run)
	run.check(t, 1.5, 0.10)
	for i, out := range logs {
		if n := strings.Count(out.String(), "the shared upstream budget cannot be reached"); n != 1 {
			t.Errorf("replica %d logged the lost budget %d times, want once:\n%s", i, n, out)
		}
	}
}

// TestRandomFaultsAtDefaults: an upstream that throttles 30% of its
// answers at random and fails 5% with 5xx, and a gateway at its default
// flags (nothing tuned: 4 attempts, the retry budget, the pacer): 20
// concurrent streams of 500 records, then 10 sequential streams of 10,000,
// each deliver every record exactly once, in order. Throttles wait for
// quota without spending attempts; the 5xx answers fit in the attempts
// and the budget.
func TestRandomFaultsAtDefaults(t *testing.T) {
	t.Parallel()
	var desktops []ecdsim.Desktop
	for i := range 20 {
		desktops = append(desktops, ecdsim.Desktop{ID: fmt.Sprintf("ecd-short%010d", i), Records: 500})
	}
	for i := range 10 {
		desktops = append(desktops, ecdsim.Desktop{ID: fmt.Sprintf("ecd-long%011d", i), Records: 10_000})
	}
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: desktops,
		Faults:   ecdsim.Faults{ThrottleFraction: 0.30, ServerErrorFraction: 0.05},
	})
	stream := func(desktop string, want int) error {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		msgs, err := gatewaytest.Stream(ctx, h.Client(connect.WithGRPC()),
			&imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: desktop})
		if err != nil {
			return fmt.Errorf("%s: %w", desktop, err)
		}
		records := gatewaytest.RecordsOf(msgs)
		if len(records) != want {
			return fmt.Errorf("%s: %d records, want %d", desktop, len(records), want)
		}
		for j, r := range records {
			rec, _ := h.Sim.Record(desktop, j)
			when, err := time.Parse(time.RFC3339, rec.UpdateTime)
			if err != nil || r.GetImageId() != rec.ImageID || r.GetNewImageId() != rec.NewImageID || !r.GetUpdateTime().AsTime().Equal(when) {
				return fmt.Errorf("%s: record %d is not the simulator's record %d", desktop, j, j)
			}
		}
		return nil
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, d := range desktops[:20] {
		wg.Go(func() {
			if err := stream(d.ID, d.Records); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	concurrent := time.Since(start)
	for _, d := range desktops[20:] {
		if err := stream(d.ID, d.Records); err != nil {
			t.Error(err)
		}
	}
	stats := h.Sim.Stats()
	t.Logf("20 × 500 concurrent in %v, then 10 × 10,000 sequential in %v; %d upstream calls, %d throttled, %d 5xx",
		concurrent.Round(time.Millisecond), (time.Since(start) - concurrent).Round(time.Millisecond), stats.Requests, stats.Throttled, stats.ServerErrors)
}

// TestListIsPromptWhileStreamsSaturateTheQuota: 20 streams of one peer
// keep the account's quota (50 calls/s) busy, and List calls from that
// peer and from another get their turn within a second (p99): the pacer
// serves callers in turns, and a List at the head of its own caller's
// queue, so a List waits for about one call of each busy caller, not for
// the streams' backlog. The List's time is read from the gateway's spans,
// apart from its upstream attempts (see TestStalledStreamsAreCut: under
// -race the in-process simulator starves on a busy machine, and the wall
// time of a call measures the machine); its wait for quota is the
// gateway's, and counts.
func TestListIsPromptWhileStreamsSaturateTheQuota(t *testing.T) {
	t.Parallel()
	const streams, records = 20, 1500
	desktops := []ecdsim.Desktop{{ID: "ecd-listquota00", Records: 10}}
	for i := range streams {
		desktops = append(desktops, ecdsim.Desktop{ID: fmt.Sprintf("ecd-satur%010d", i), Records: records})
	}
	sim, url := gatewaytest.Simulator(t, ecdsim.Config{
		Desktops: desktops,
		Faults:   ecdsim.Faults{Latency: quotaLatency},
		Quota:    ecdsim.Quota{QPS: quotaQPS, Burst: quotaBurst},
	})
	spans := tracetest.NewSpanRecorder()
	h := gatewaytest.New(t, gatewaytest.Config{Upstream: url, SpanProcessor: spans})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	done := make(chan struct{})
	var streaming sync.WaitGroup
	for i := range streams {
		streaming.Go(func() {
			desktop := desktops[1+i].ID
			msgs, err := gatewaytest.Stream(ctx, clientFrom(h, "127.0.0.1", 0),
				&imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: desktop})
			if err != nil {
				t.Errorf("stream %s: %v", desktop, err)
			} else if n := len(gatewaytest.RecordsOf(msgs)); n != records {
				t.Errorf("stream %s: %d records, want %d", desktop, n, records)
			}
		})
	}
	go func() { streaming.Wait(); close(done) }()
	// Two peers list: the streams' own, whose List must not wait behind
	// its streams' backlog, and another.
	type lister struct {
		peer      string
		latencies []time.Duration
		failures  []error
	}
	listers := []*lister{{peer: "127.0.0.1"}, {peer: "127.0.0.2"}}
	var listing sync.WaitGroup
	for _, l := range listers {
		listing.Go(func() {
			l.latencies, l.failures = listUntil(ctx, clientFrom(h, l.peer, 0), desktops[0].ID, done)
		})
	}
	listing.Wait()
	if ctx.Err() != nil {
		t.Fatal("the streams did not end within 2 minutes")
	}
	var latencies []time.Duration
	for _, l := range listers {
		if len(l.failures) > 0 {
			t.Errorf("peer %s: %d of %d List calls failed, first: %v", l.peer, len(l.failures), len(l.latencies), l.failures[0])
		}
		if len(l.latencies) < 20 {
			t.Errorf("peer %s: only %d List calls while the streams ran", l.peer, len(l.latencies))
			continue
		}
		slices.Sort(l.latencies)
		t.Logf("peer %s at the client: %d List calls, p50 %v, p99 %v", l.peer, len(l.latencies), l.latencies[len(l.latencies)/2], p99(l.latencies))
		latencies = append(latencies, l.latencies...)
	}
	t.Logf("upstream: %d calls, %d throttled by the quota", sim.Stats().Requests, sim.Stats().QuotaThrottled)
	inGateway, upstreamTime := listTimesInTheGateway(spans.Ended())
	if len(inGateway) < 20 || len(inGateway) < len(latencies)-4 { // the last calls may end after the spans were read
		t.Fatalf("spans of %d List calls, of %d made while the streams ran; want at least 20", len(inGateway), len(latencies))
	}
	slices.Sort(latencies)
	t.Logf("%d List calls of both peers: in the gateway p50 %v, p99 %v; upstream attempts p99 %v; at the client p50 %v, p99 %v",
		len(inGateway), inGateway[len(inGateway)/2], p99(inGateway), p99(upstreamTime), latencies[len(latencies)/2], p99(latencies))
	if p := p99(inGateway); p > time.Second {
		t.Errorf("List p99 in the gateway %v while the streams saturate the quota, want at most 1 s", p)
	}
}
