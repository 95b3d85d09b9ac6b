// Command imagerecordsd is the ECD image-records gateway: it serves
// ecd.imagerecords.v1.ImageRecordsService over Connect, gRPC and gRPC-Web
// on one port and answers from Alibaba Cloud ECD's
// DescribeImageModifiedRecords API, or, with --simulate, from an embedded
// simulator.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := Run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "imagerecordsd:", err)
		var usage usageError
		if errors.As(err, &usage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
