// Command ecdsim serves a simulated Alibaba Cloud ECD endpoint for
// DescribeImageModifiedRecords (see package ecdsim) until SIGINT or SIGTERM.
//
// It prints its address, its access key and the sample desktops, e.g.
//
//	ecdsim --listen 127.0.0.1:9000 --seed 1 --throttle 0.1 --stuck-desktop ecd-stuck
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
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *akID == "" {
		*akID = "LTAI" + randomAlnum(20)
	}
	if *akSecret == "" {
		*akSecret = randomAlnum(30)
	}
	desktops := ecdsim.DefaultDesktops(*seed)
	if *stuck != "" {
		desktops = append(desktops, ecdsim.Desktop{ID: *stuck, Records: 250, StuckToken: true})
	}
	sim, err := ecdsim.New(ecdsim.Config{
		Seed:     *seed,
		Desktops: desktops,
		Keys:     []ecdsim.Key{{AccessKeyID: *akID, AccessKeySecret: *akSecret}},
		Faults: ecdsim.Faults{
			Latency:             *latency,
			ThrottleFraction:    *throttle,
			ServerErrorFraction: *serverErrors,
		},
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
	fmt.Fprintln(stdout, "desktops:")
	for _, d := range sim.Desktops() {
		note := ""
		if d.StuckToken {
			note = " (NextToken never advances)"
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
