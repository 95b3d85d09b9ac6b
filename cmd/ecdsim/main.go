// Command ecdsim serves a simulated Alibaba Cloud ECD endpoint for
// DescribeImageModifiedRecords (see package ecdsim) until SIGINT or SIGTERM.
//
// It prints its address, its access key, the served regions and the sample
// desktops, e.g.
//
//	ecdsim --listen 127.0.0.1:9000 --seed 1 --throttle 0.1 --stuck-desktop ecd-stuck
//
// Besides injected faults (--latency, --throttle, --server-errors,
// --stuck-desktop) it can enforce an account quota shared by every client
// (--quota-qps, --quota-burst, and --quota-hint to send the
// x-ratelimit-user-api TimeLeft hint on quota throttles), serve a chosen
// set of regions (--regions; others are answered InvalidRegionId), serve
// records newest first (--order newest), and keep the image changes of the
// first sample desktops going while it runs (--live-desktops, with
// --live-every, --live-in-progress and --live-fail-fraction), e.g.
//
//	ecdsim --quota-qps 5 --quota-burst 10 --live-desktops 2 --live-every 20s --order newest
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case err != nil:
		fmt.Fprintln(os.Stderr, "ecdsim:", err)
		os.Exit(1)
	}
}

// run parses args, serves until ctx is done, then shuts down gracefully.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ecdsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:9000", "`address` to listen on")
	seed := fs.Int64("seed", 1, "seed of the desktop ids, records, tokens and fault decisions")
	akID := fs.String("access-key-id", "", "accepted AccessKeyId (default: random)")
	akSecret := fs.String("access-key-secret", "", "its AccessKeySecret (default: random)")
	latency := fs.Duration("latency", 0, "latency added to every response")
	throttle := fs.Float64("throttle", 0, "`fraction` of authenticated requests answered Throttling.User")
	serverErrors := fs.Float64("server-errors", 0, "`fraction` of authenticated requests answered 503/500")
	stuck := fs.String("stuck-desktop", "", "add a desktop with this `id` and 250 records whose NextToken never advances")
	quotaQPS := fs.Float64("quota-qps", 0, "account quota: `calls` per second shared by every client (0: no quota)")
	quotaBurst := fs.Int("quota-burst", 0, "account quota: bucket `size` (0: quota-qps rounded up, at least 1)")
	quotaHint := fs.Bool("quota-hint", false, "send x-ratelimit-user-api with TimeLeft (ms) on quota throttles")
	regions := fs.String("regions", "", "comma-separated region `ids` served (default: ECD's Asia Pacific regions)")
	order := fs.String("order", "oldest", "record `order` of a page: oldest or newest first")
	liveN := fs.Int("live-desktops", 0, "make the first `n` sample desktops live: their image changes go on")
	liveEvery := fs.Duration("live-every", ecdsim.DefaultLiveEvery, "mean time between the starts of a live desktop's changes")
	liveInProgress := fs.Duration("live-in-progress", ecdsim.DefaultLiveInProgress, "mean time a live change stays in progress")
	liveFail := fs.Float64("live-fail-fraction", 0.2, "`fraction` of live changes that fail")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	var recordOrder ecdsim.Order
	switch *order {
	case "oldest":
		recordOrder = ecdsim.OldestFirst
	case "newest":
		recordOrder = ecdsim.NewestFirst
	default:
		return fmt.Errorf("--order %q: want oldest or newest", *order)
	}
	var regionList []string
	if *regions != "" {
		regionList = strings.Split(*regions, ",")
	}
	if *akID == "" {
		*akID = "LTAI" + randomAlnum(20)
	}
	if *akSecret == "" {
		*akSecret = randomAlnum(30)
	}
	desktops := ecdsim.DefaultDesktops(*seed)
	if *liveN < 0 || *liveN > len(desktops) {
		return fmt.Errorf("--live-desktops %d: want 0 to %d", *liveN, len(desktops))
	}
	for i := range *liveN {
		desktops[i].Live = true
	}
	if *stuck != "" {
		desktops = append(desktops, ecdsim.Desktop{ID: *stuck, Records: 250, StuckToken: true})
	}
	sim, err := ecdsim.New(ecdsim.Config{
		Seed:     *seed,
		Desktops: desktops,
		Keys:     []ecdsim.Key{{AccessKeyID: *akID, AccessKeySecret: *akSecret}},
		Regions:  regionList,
		Faults: ecdsim.Faults{
			Latency:             *latency,
			ThrottleFraction:    *throttle,
			ServerErrorFraction: *serverErrors,
		},
		Quota: ecdsim.Quota{QPS: *quotaQPS, Burst: *quotaBurst, Hint: *quotaHint},
		Live:  ecdsim.Live{Every: *liveEvery, InProgress: *liveInProgress, FailFraction: *liveFail},
		Order: recordOrder,
	})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second}

	fmt.Fprintf(stdout, "ecdsim listening on http://%s\n", ln.Addr())
	fmt.Fprintf(stdout, "access key id:     %s\n", *akID)
	fmt.Fprintf(stdout, "access key secret: %s\n", *akSecret)
	fmt.Fprintf(stdout, "regions:           %s\n", strings.Join(sim.Regions(), ", "))
	fmt.Fprintf(stdout, "record order:      %s first\n", recordOrder)
	if q := sim.Quota(); q.QPS > 0 {
		fmt.Fprintf(stdout, "account quota:     %g calls/s, burst %d, TimeLeft hint %v\n", q.QPS, q.Burst, q.Hint)
	}
	if *liveN > 0 {
		fmt.Fprintf(stdout, "live changes:      %v\n", ecdsim.Live{Every: *liveEvery, InProgress: *liveInProgress, FailFraction: *liveFail})
	}
	fmt.Fprintln(stdout, "desktops:")
	for _, d := range sim.Desktops() {
		note := ""
		switch {
		case d.StuckToken:
			note = " (NextToken never advances)"
		case d.Live:
			note = " (live: more changes start over time)"
		}
		fmt.Fprintf(stdout, "  %-24s %5d records%s\n", d.ID, d.Records, note)
	}

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// randomAlnum returns n random letters and digits from crypto/rand.
func randomAlnum(n int) string {
	const chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	out := make([]byte, 0, n)
	var buf [64]byte
	for len(out) < n {
		_, _ = rand.Read(buf[:]) // never fails (crypto/rand docs)
		for _, c := range buf {
			// 248 is the largest multiple of 62 that fits a byte: no bias.
			if c < 248 && len(out) < n {
				out = append(out, chars[int(c)%len(chars)])
			}
		}
	}
	return string(out)
}
