// Command imagerecordsd is the ECD image-records gateway: it serves
// ecd.imagerecords.v1.ImageRecordsService over Connect, gRPC and gRPC-Web
// on one port and answers from Alibaba Cloud ECD's
// DescribeImageModifiedRecords API, or, with --simulate, from an embedded
// simulator. The gateway itself is package
// github.com/imagerecords/imagerecords/service/gateway; this command turns
// flags and environment variables into its Config, runs it, and exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/imagerecords/imagerecords/service/gateway"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the gateway of args and the environment until ctx is done, and
// returns the exit code: 0 after a clean shutdown or -h, 2 for a bad
// command line or environment variable, 1 for any other failure.
func run(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) int {
	cfg, err := gateway.ParseArgs(args, lookupEnv, stderr)
	if err == nil {
		err = gateway.Run(ctx, cfg, stdout, stderr, nil)
	}
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintln(stderr, "imagerecordsd:", err)
	if _, ok := errors.AsType[*gateway.UsageError](err); ok {
		return 2
	}
	return 1
}
