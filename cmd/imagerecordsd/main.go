// Command imagerecordsd is the ECD image-records gateway: it serves
// ecd.imagerecords.v1.ImageRecordsService over Connect, gRPC and gRPC-Web
// on one port and answers from Alibaba Cloud ECD's
// DescribeImageModifiedRecords API, or, with --simulate, from an embedded
// simulator. The gateway itself is package
// github.com/imagerecords/imagerecords/service/gateway; this command turns
// flags and environment variables into its Config, runs it, and exits.
package main

import (
	"bytes"
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
	code := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the gateway of args and the environment (os.Environ's
// "KEY=value" form) until ctx is done, and returns the exit code: 0 after
// a clean shutdown, -h or --version, 2 for a bad command line or
// environment variable, 1 for any other failure. Help and the version go
// to stdout; errors, and the usage after a bad flag, to stderr.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) int {
	if wantsVersion(args) {
		fmt.Fprintln(stdout, "imagerecordsd", gateway.Version())
		return 0
	}
	var usage bytes.Buffer
	cfg, err := gateway.ParseEnviron(args, environ, &usage)
	if errors.Is(err, flag.ErrHelp) {
		_, _ = usage.WriteTo(stdout)
		return 0
	}
	_, _ = usage.WriteTo(stderr)
	if err == nil {
		err = gateway.Run(ctx, cfg, stdout, stderr, nil)
	}
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "imagerecordsd:", err)
	if _, ok := errors.AsType[*gateway.UsageError](err); ok {
		return 2
	}
	return 1
}

// wantsVersion reports whether args ask for the version (-version or
// --version before any "--").
func wantsVersion(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-version", "--version", "-version=true", "--version=true":
			return true
		}
	}
	return false
}
