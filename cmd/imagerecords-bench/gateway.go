package main

import (
	"context"
	"errors"
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
