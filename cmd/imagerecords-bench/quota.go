package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"time"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/service/gateway"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// This file holds scenario 10, living within the account's API quota
// (issue 9).

// quotaOptions are scenario 10's flags.
type quotaOptions struct {
	streams, records int
	qps              float64
	burst            int
	latency          time.Duration
}

// quotaFlags adds scenario 10's flags to fs.
func quotaFlags(fs *flag.FlagSet, q *quotaOptions) {
	fs.IntVar(&q.streams, "s10-streams", 30, "scenario 10: concurrent streams (one desktop each), spread over the replicas")
	fs.IntVar(&q.records, "s10-records", 2000, "scenario 10: records per stream")
	fs.Float64Var(&q.qps, "s10-quota", 50, "scenario 10: the simulator's account quota in calls per second (the gateways run at imagerecordsd's defaults)")
	fs.IntVar(&q.burst, "s10-burst", 10, "scenario 10: calls the quota allows at once")
	fs.DurationVar(&q.latency, "s10-latency", 10*time.Millisecond, "scenario 10: upstream latency per call")
}

// quotaDeployment is one run's deployment: how many replicas, and whether
// they share one budget in Redis.
type quotaDeployment struct {
	replicas int
	redis    bool
	// maxWall is the target wall time in quota floors, maxThrottled the
	// target share of upstream calls throttled (issue 9).
	maxWall, maxThrottled float64
}

func (d quotaDeployment) String() string {
	s := "1 replica"
	if d.replicas > 1 {
		s = fmt.Sprintf("%d replicas", d.replicas)
	}
	if d.redis {
		s += " + Redis"
	}
	return s
}

// quotaDeployments are the runs of scenario 10, with the targets of
// issue 9.
var quotaDeployments = []quotaDeployment{
	{replicas: 1, maxWall: 1.25, maxThrottled: 0.15},
	{replicas: 3, maxWall: 1.25, maxThrottled: 0.15},
	{replicas: 1, redis: true, maxWall: 1.10, maxThrottled: 0.03},
	{replicas: 3, redis: true, maxWall: 1.10, maxThrottled: 0.03},
}

// quotaRun is what one run measured.
type quotaRun struct {
	wall             time.Duration
	calls, throttled int64 // upstream requests answered, and those throttled by the quota
	complete         int   // streams that delivered every record exactly once, in order
	firstErr         error
}

// scenarioQuota: issue 9's setup. One simulated account with a quota
// (50 calls/s, burst 10) and 10 ms per call; gateways at imagerecordsd's
// defaults in front of it (--upstream-qps 100, above the quota), one or
// three replicas, alone or sharing one budget in a real redis-server; 30
// concurrent streams of 2,000 records spread over the replicas. The floor
// is the quota's: pages ÷ quota.
func scenarioQuota(o options, log io.Writer) (*report, error) {
	q := o.s10
	if q.streams < 1 || q.records < 1 || q.qps <= 0 || q.burst < 1 {
		return nil, errors.New("-s10-streams, -s10-records, -s10-quota and -s10-burst must be positive")
	}
	desktops, ids := fleetDesktops("s10q", q.streams, q.records)
	pages := q.streams * pagesFor(q.records, upstream.MaxPageSize)
	floor := time.Duration(float64(pages) / q.qps * float64(time.Second))
	rep := &report{}
	for _, d := range quotaDeployments {
		label := fmt.Sprintf("%s, %d streams × %d", d, q.streams, q.records)
		var redisURL string
		var redis *gatewaytest.RedisServer
		if d.redis {
			var err error
			redis, err = gatewaytest.StartRedis()
			if errors.Is(err, exec.ErrNotFound) {
				rep.add(row{scenario: 10, metric: label + ": not run, redis-server is not installed (apt-get install redis-server)",
					unit: unitCount, measured: none(), reference: none()})
				continue
			}
			if err != nil {
				return nil, err
			}
			redisURL = redis.URL
		}
		fmt.Fprintf(log, "scenario 10: %s, quota %g calls/s ...\n", label, q.qps)
		r, err := runQuota(q, desktops, ids, d.replicas, redisURL)
		if redis != nil {
			redis.Stop()
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d, err)
		}
		share := float64(r.throttled) / float64(max(r.calls, 1))
		rep.add(row{scenario: 10, metric: fmt.Sprintf("wall time, %s (ref: quota floor %d pages ÷ %g/s)", label, pages, q.qps),
			unit: unitDuration, measured: seconds(r.wall), reference: seconds(floor),
			target: fmt.Sprintf("≤ %.2f×", d.maxWall), verdict: check(float64(r.wall) <= d.maxWall*float64(floor))})
		rep.add(row{scenario: 10, metric: fmt.Sprintf("upstream calls throttled, %s (%d of %d)", d, r.throttled, r.calls),
			unit: unitFloat, suffix: "%", measured: 100 * share, reference: none(),
			target: fmt.Sprintf("≤ %.0f%%", 100*d.maxThrottled), verdict: check(share <= d.maxThrottled)})
		rep.add(row{scenario: 10, metric: fmt.Sprintf("streams complete, every record once (checked against the simulator), %s", d),
			unit: unitCount, suffix: "streams", measured: float64(r.complete), reference: float64(q.streams),
			target: "all", verdict: check(r.complete == q.streams)})
		if r.firstErr != nil {
			rep.note("%s: %d of %d streams failed, the first with %v", d, q.streams-r.complete, q.streams, r.firstErr)
		}
		rep.note("%s: %d upstream calls in %v, %.1f calls/s", d, r.calls, r.wall.Round(time.Millisecond), float64(r.calls)/r.wall.Seconds())
	}
	def := gateway.DefaultConfig()
	rep.note("gateways at imagerecordsd's defaults (--upstream-qps %g --upstream-burst %d --upstream-max-wait %v), each with its own pacer; "+
		"with Redis, --quota-redis on a redis-server of its own per run (--save \"\" --appendonly no) and the default --quota-key (a hash of the AccessKeyId, the same on every replica)",
		def.UpstreamQPS, def.UpstreamBurst, def.UpstreamMaxWait)
	rep.note("simulator: account quota %g calls/s, bucket of %d, Throttling.User past it; %v per call; a fresh simulator and fresh replicas per run; stream i goes to replica i mod replicas, all from one loopback peer",
		q.qps, q.burst, q.latency)
	return rep, nil
}

// runQuota starts a simulator with the account quota and replicas
// gateways at imagerecordsd's defaults in front of it (sharing the budget
// in Redis at redisURL, when set), streams every desktop once, desktop i
// through replica i mod replicas, and checks every record against the
// simulator.
func runQuota(q quotaOptions, desktops []ecdsim.Desktop, ids []string, replicas int, redisURL string) (quotaRun, error) {
	var r quotaRun
	var args []string
	if redisURL != "" {
		args = []string{"--quota-redis", redisURL}
	}
	first, err := gatewaytest.Start(gatewaytest.Config{
		Args:     args,
		Desktops: desktops,
		Faults:   ecdsim.Faults{Latency: q.latency},
		Quota:    ecdsim.Quota{QPS: q.qps, Burst: q.burst},
	})
	if err != nil {
		return r, err
	}
	defer first.Close()
	stacks := []*gatewaytest.Stack{first}
	for range replicas - 1 {
		s, err := gatewaytest.Start(gatewaytest.Config{Args: args, Upstream: first.SimURL})
		if err != nil {
			return r, err
		}
		defer s.Close()
		stacks = append(stacks, s)
	}
	sim := first.Sim
	// Bound each stream generously: five quota floors and a minute.
	bound := 5*time.Duration(float64(len(ids)*pagesFor(q.records, upstream.MaxPageSize))/q.qps*float64(time.Second)) + time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()

	before := sim.Stats()
	errs := make([]error, len(ids))
	start := time.Now()
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			msgs, err := gatewaytest.Stream(ctx, stacks[i%len(stacks)].Client(connect.WithGRPC()),
				&imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: region, DesktopId: id})
			if err != nil {
				errs[i] = fmt.Errorf("stream %s: %w", id, err)
				return
			}
			errs[i] = exactRecords(sim, id, q.records, gatewaytest.RecordsOf(msgs))
		})
	}
	wg.Wait()
	r.wall = time.Since(start)
	after := sim.Stats()
	r.calls, r.throttled = after.Requests-before.Requests, after.QuotaThrottled-before.QuotaThrottled
	for _, err := range errs {
		if err == nil {
			r.complete++
		} else if r.firstErr == nil {
			r.firstErr = err
		}
	}
	return r, nil
}

// exactRecords checks that got are the simulator's records of desktop,
// each once, in order, want in all.
func exactRecords(sim *ecdsim.Simulator, desktop string, want int, got []*imagerecordsv1.ImageModifiedRecord) error {
	if len(got) != want {
		return fmt.Errorf("stream %s: %d records, want %d", desktop, len(got), want)
	}
	for j, rec := range got {
		w, ok := sim.Record(desktop, j)
		when, err := time.Parse(time.RFC3339, w.UpdateTime)
		if !ok || err != nil || rec.GetImageId() != w.ImageID || rec.GetNewImageId() != w.NewImageID || !rec.GetUpdateTime().AsTime().Equal(when) {
			return fmt.Errorf("stream %s: record %d is not the simulator's record %d", desktop, j, j)
		}
	}
	return nil
}
