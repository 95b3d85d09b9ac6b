package service_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service"
	"github.com/imagerecords/imagerecords/upstream"
)

// shapedDesktops answers every desktop with pages of different shapes in
// turn, so that a message's records are built where an earlier message's
// records of another shape were: full pages with every field and a time,
// short pages with no strings and no time, and an unknown status.
type shapedDesktops struct{}

// shapedPages is how many pages each desktop has.
const shapedPages = 6

func (shapedDesktops) DescribeImageModifiedRecords(_ context.Context, in upstream.DescribeInput) (*upstream.Page, error) {
	k := 0
	if in.NextToken != "" {
		k, _ = strconv.Atoi(in.NextToken)
	}
	page := &upstream.Page{RequestID: fmt.Sprintf("%s-%d", in.DesktopID, k), TotalCount: 100 * shapedPages}
	if k+1 < shapedPages {
		page.NextToken = strconv.Itoa(k + 1)
	}
	n := 100
	if k%2 == 1 {
		n = 40 + k
	}
	page.Records = make([]upstream.Record, n)
	for i := range page.Records {
		r := &page.Records[i]
		r.Status = (i + k) % 3
		if k%2 == 0 {
			r.UpdateTime = time.Unix(int64(1e9+1000*k+i), int64(k)).UTC()
			r.ImageID = fmt.Sprintf("%s-m-%d-%d", in.DesktopID, k, i)
			r.ImageName = "镜像 " + r.ImageID
			r.NewImageID = r.ImageID + "-new"
			r.NewImageName = r.ImageName + " new"
			r.Reason = "reason " + r.ImageID
		} else if i%7 == 0 {
			r.Status = 7
		}
	}
	return page, nil
}

// wantRecord is what the API promises for an upstream record.
func wantRecord(r upstream.Record) *imagerecordsv1.ImageModifiedRecord {
	statuses := map[int]imagerecordsv1.ImageModificationStatus{
		0: imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_IN_PROGRESS,
		1: imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_SUCCEEDED,
		2: imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_FAILED,
	}
	w := &imagerecordsv1.ImageModifiedRecord{
		Status:         statuses[r.Status], // UNSPECIFIED when unknown
		UpstreamStatus: proto.Int32(int32(r.Status)),
		ImageId:        r.ImageID,
		ImageName:      r.ImageName,
		NewImageId:     r.NewImageID,
		NewImageName:   r.NewImageName,
		Reason:         r.Reason,
	}
	if !r.UpdateTime.IsZero() {
		w.UpdateTime = timestamppb.New(r.UpdateTime)
	}
	return w
}

// TestStreamMessagesCarryTheirOwnPagesRecords streams many desktops at
// once over loopback gRPC and checks every record of every message
// against its upstream record: the blocks the stream builds its messages
// in are recycled, so a time, a string or a status left over from an
// earlier message, or another stream's, would show here.
func TestStreamMessagesCarryTheirOwnPagesRecords(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	mux := http.NewServeMux()
	mux.Handle(imagerecordsv1connect.NewImageRecordsServiceHandler(service.New(shapedDesktops{})))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	client := imagerecordsv1connect.NewImageRecordsServiceClient(srv.Client(), srv.URL, connect.WithGRPC())

	const desktops = 8
	var wg sync.WaitGroup
	errs := make(chan error, desktops)
	for d := range desktops {
		wg.Go(func() {
			desktop := fmt.Sprintf("ecd-shaped%d", d)
			stream, err := client.StreamImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
				RegionId: "cn-hangzhou", DesktopId: desktop}))
			if err != nil {
				errs <- err
				return
			}
			defer stream.Close()
			k := 0
			for ; stream.Receive(); k++ {
				page, _ := shapedDesktops{}.DescribeImageModifiedRecords(ctx, upstream.DescribeInput{DesktopID: desktop, NextToken: strconv.Itoa(k)})
				got := stream.Msg().GetRecords()
				if len(got) != len(page.Records) || stream.Msg().GetRequestId() != page.RequestID {
					errs <- fmt.Errorf("%s message %d: %d records of %q, want %d of %q", desktop, k, len(got), stream.Msg().GetRequestId(), len(page.Records), page.RequestID)
					return
				}
				for i, r := range page.Records {
					if want := wantRecord(r); !proto.Equal(got[i], want) {
						errs <- fmt.Errorf("%s message %d record %d = %v, want %v", desktop, k, i, got[i], want)
						return
					}
				}
			}
			if err := stream.Err(); err != nil || k != shapedPages {
				errs <- fmt.Errorf("%s: %d messages, error %v; want %d messages", desktop, k, err, shapedPages)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
