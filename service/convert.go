package service

import (
	"sync"

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
	var b recordBlock
	return b.convert(in)
}

// recordBlock holds the proto records of one message: the records, their
// timestamps and their upstream_status values, one slice each.
type recordBlock struct {
	out      []*imagerecordsv1.ImageModifiedRecord
	records  []imagerecordsv1.ImageModifiedRecord
	times    []timestamppb.Timestamp
	statuses []int32
}

// recordBlocks recycles the blocks of stream messages: once Send has
// returned, the message is encoded and its records are free again. At
// fan-in they were a quarter of the bytes the gateway allocated per page.
var recordBlocks = sync.Pool{New: func() any { return new(recordBlock) }}

// convert turns in into proto records held by b, in place of the ones b
// held before, which must be cleared (as release does) or never used.
func (b *recordBlock) convert(in []upstream.Record) []*imagerecordsv1.ImageModifiedRecord {
	n := len(in)
	if cap(b.records) < n {
		b.out = make([]*imagerecordsv1.ImageModifiedRecord, n)
		b.records = make([]imagerecordsv1.ImageModifiedRecord, n)
		b.times = make([]timestamppb.Timestamp, n)
		b.statuses = make([]int32, n)
	}
	out, records, times, statuses := b.out[:n], b.records[:n], b.times[:n], b.statuses[:n]
	for i := range in {
		r, pr := &in[i], &records[i]
		pr.Status = statusOf(r.Status)
		statuses[i] = int32(r.Status)
		pr.UpstreamStatus = &statuses[i]
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

// release clears b, so that a pooled block keeps no page's strings alive,
// and returns it to recordBlocks.
func (b *recordBlock) release() {
	clear(b.out)
	clear(b.records)
	clear(b.times)
	recordBlocks.Put(b)
}
