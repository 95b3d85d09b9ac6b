package service

import (
	"google.golang.org/protobuf/types/known/timestamppb"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/upstream"
)

// statusOf maps the upstream Status number; a number this version does not
// know becomes UNSPECIFIED, and the record keeps it in upstream_status.
func statusOf(n int) imagerecordsv1.ImageModificationStatus {
	switch n {
	case 0:
		return imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_IN_PROGRESS
	case 1:
		return imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_SUCCEEDED
	case 2:
		return imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_FAILED
	}
	return imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_UNSPECIFIED
}

// convertRecords turns upstream records into proto records. The records,
// their timestamps and their upstream_status values are allocated as one
// block each per page, not one object each: a page is sent, and freed, as a
// whole.
func convertRecords(in []upstream.Record) []*imagerecordsv1.ImageModifiedRecord {
	out := make([]*imagerecordsv1.ImageModifiedRecord, len(in))
	records := make([]imagerecordsv1.ImageModifiedRecord, len(in))
	times := make([]timestamppb.Timestamp, len(in))
	upstreamStatuses := make([]int32, len(in))
	for i := range in {
		r, pr := &in[i], &records[i]
		pr.Status = statusOf(r.Status)
		upstreamStatuses[i] = int32(r.Status)
		pr.UpstreamStatus = &upstreamStatuses[i]
		pr.ImageId = r.ImageID
		pr.ImageName = r.ImageName
		pr.NewImageId = r.NewImageID
		pr.NewImageName = r.NewImageName
		pr.Reason = r.Reason
		if !r.UpdateTime.IsZero() {
			times[i].Seconds = r.UpdateTime.Unix()
			times[i].Nanos = int32(r.UpdateTime.Nanosecond())
			pr.UpdateTime = &times[i]
		}
		out[i] = pr
	}
	return out
}
