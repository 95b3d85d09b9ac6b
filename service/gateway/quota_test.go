package gateway_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// Living within the account's quota, end to end: a simulated account with
// a quota of 50 calls/s (burst 10) and 10 ms per call, gateway replicas at
// their default flags (--upstream-qps 100, which is above the quota), and
// 30 streams of 2,000 records each spread over them. The quota floor is
// 600 pages ÷ 50/s = 12 s.

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
// 1.25× the quota floor, with at most 15% of upstream calls throttled.
func TestReplicasLiveWithinTheQuota(t *testing.T) {
	sim, url := quotaSimulator(t)
	var replicas []*gatewaytest.Stack
	for range 3 {
		replicas = append(replicas, gatewaytest.New(t, gatewaytest.Config{Upstream: url}))
	}
	run := runQuotaScenario(t, sim, replicas, nil)
	t.Logf("3 replicas, no coordination: %v", run)
	if limit := 1.25 * quotaFloorSec; run.wall.Seconds() > limit {
		t.Errorf("wall %.2f s, want at most %.2f s (1.25× the floor)", run.wall.Seconds(), limit)
	}
	if share := float64(run.throttled) / float64(run.calls); share > 0.15 {
		t.Errorf("%.1f%% of upstream calls throttled, want at most 15%%", 100*share)
	}
}

// TestReplicasShareOneBudgetInRedis: the same three replicas at default
// flags plus --quota-redis on a real redis-server take their calls from one
// budget, and stay within 1.10× the quota floor with at most 3% of
// upstream calls throttled.
func TestReplicasShareOneBudgetInRedis(t *testing.T) {
	redis := gatewaytest.Redis(t)
	sim, url := quotaSimulator(t)
	var replicas []*gatewaytest.Stack
	for range 3 {
		replicas = append(replicas, gatewaytest.New(t, gatewaytest.Config{Upstream: url, Args: []string{"--quota-redis", redis.URL}}))
	}
	run := runQuotaScenario(t, sim, replicas, nil)
	t.Logf("3 replicas, one budget in Redis: %v", run)
	if limit := 1.10 * quotaFloorSec; run.wall.Seconds() > limit {
		t.Errorf("wall %.2f s, want at most %.2f s (1.10× the floor)", run.wall.Seconds(), limit)
	}
	if share := float64(run.throttled) / float64(run.calls); share > 0.03 {
		t.Errorf("%.1f%% of upstream calls throttled, want at most 3%%", 100*share)
	}
}

// TestRedisDownMidRunLosesNothing: Redis dies when half the records have
// arrived; every replica goes on pacing alone, says so once in its log,
// and every stream still delivers every record exactly once.
func TestRedisDownMidRunLosesNothing(t *testing.T) {
	redis := gatewaytest.Redis(t)
	sim, url := quotaSimulator(t)
	var replicas []*gatewaytest.Stack
	var logs []*gatewaytest.Output
	for range 3 {
		out := &gatewaytest.Output{}
		logs = append(logs, out)
		replicas = append(replicas, gatewaytest.New(t, gatewaytest.Config{Upstream: url, Args: []string{"--quota-redis", redis.URL}, Logs: out}))
	}
	run := runQuotaScenario(t, sim, replicas, redis.Stop)
	t.Logf("3 replicas, Redis killed midway: %v", run)
	for i, out := range logs {
		if n := strings.Count(out.String(), "the shared upstream budget cannot be reached"); n != 1 {
			t.Errorf("replica %d logged the lost budget %d times, want once:\n%s", i, n, out)
		}
	}
}
