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

// convertRecords turns upstream records into proto records.
func convertRecords(in []upstream.Record) []*imagerecordsv1.ImageModifiedRecord {
	out := make([]*imagerecordsv1.ImageModifiedRecord, len(in))
	for i := range in {
		r := &in[i]
		pr := &imagerecordsv1.ImageModifiedRecord{
			Status:         statusOf(r.Status),
			UpstreamStatus: int32(r.Status),
			ImageId:        r.ImageID,
			ImageName:      r.ImageName,
			NewImageId:     r.NewImageID,
			NewImageName:   r.NewImageName,
			Reason:         r.Reason,
		}
		if !r.UpdateTime.IsZero() {
			pr.UpdateTime = timestamppb.New(r.UpdateTime)
		}
		out[i] = pr
	}
	return out
}
