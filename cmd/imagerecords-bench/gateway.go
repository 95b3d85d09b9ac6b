package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
)

// gatewayStream receives a whole StreamImageModifiedRecords stream,
// calling onMsg after every message, and returns the record count.
func gatewayStream(ctx context.Context, c imagerecordsv1connect.ImageRecordsServiceClient, desktop string,
	onMsg func(*imagerecordsv1.StreamImageModifiedRecordsResponse)) (records int, err error) {
	stream, err := c.StreamImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId:  region,
		DesktopId: desktop,
	}))
	if err != nil {
		return 0, err
	}
	for stream.Receive() {
		msg := stream.Msg()
		records += len(msg.GetRecords())
		if onMsg != nil {
			onMsg(msg)
		}
	}
	err = stream.Err()
	if cerr := stream.Close(); err == nil && cerr != nil && !errors.Is(cerr, io.EOF) {
		err = cerr
	}
	return records, err
}

// gatewayList asks the gateway for the first page of pageSize records.
func gatewayList(ctx context.Context, c imagerecordsv1connect.ImageRecordsServiceClient, desktop string, pageSize int32) (*imagerecordsv1.ListImageModifiedRecordsResponse, error) {
	res, err := c.ListImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
		RegionId:  region,
		DesktopId: desktop,
		PageSize:  pageSize,
	}))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// fleetResult is what one fleet call delivered.
type fleetResult struct {
	records, messages int
	summary           *imagerecordsv1.FleetSummary
}

// gatewayFleet receives a whole StreamFleetImageModifiedRecords stream of
// ids, calling onMsg with the record count of every message. A desktop
// error message or a missing summary is an error.
func gatewayFleet(ctx context.Context, c imagerecordsv1connect.ImageRecordsServiceClient, ids []string, concurrency int32,
	onMsg func(records int)) (fleetResult, error) {
	var res fleetResult
	stream, err := c.StreamFleetImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.StreamFleetImageModifiedRecordsRequest{
		RegionId: region, DesktopIds: ids, MaxConcurrency: concurrency,
	}))
	if err != nil {
		return res, err
	}
	var desktopErr error
	for stream.Receive() {
		msg := stream.Msg()
		res.messages++
		n := len(msg.GetDesktopRecords().GetRecords())
		res.records += n
		if e := msg.GetDesktopError(); e != nil && desktopErr == nil {
			desktopErr = fmt.Errorf("desktop %s: %v %s", e.GetDesktopId(), e.GetCode(), e.GetMessage())
		}
		if s := msg.GetSummary(); s != nil {
			res.summary = s
		}
		if onMsg != nil {
			onMsg(n)
		}
	}
	err = stream.Err()
	if cerr := stream.Close(); err == nil && cerr != nil && !errors.Is(cerr, io.EOF) {
		err = cerr
	}
	switch {
	case err != nil:
	case desktopErr != nil:
		err = desktopErr
	case res.summary == nil:
		err = errors.New("the fleet ended without a summary")
	}
	return res, err
}
