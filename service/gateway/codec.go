package gateway

import (
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
)

// recordsCodec is the connect "proto" codec of the service handler. It
// encodes the messages that carry pages of records
// (StreamImageModifiedRecordsResponse, ListImageModifiedRecordsResponse)
// by hand, straight from their generated fields, into the bytes
// proto.Marshal writes for them, and hands every other message to proto.
// At fan-in proto's table-driven encoder cost about a tenth of the
// gateway's CPU; this one writes the same bytes in about half the time
// (BenchmarkMarshalStreamPage: 16 µs for 100 records, against 30 µs),
// two fifths of it in the UTF-8 check that proto makes too.
//
// A page whose encoding the encoder cannot vouch for goes to proto as
// well: one with unknown fields, a nil record or a string that is not
// valid UTF-8 (so that such a page fails exactly as proto fails it), and
// every page if the generated messages no longer have the fields the
// encoder writes (see [encodedFields]). Decoding is proto's.
type recordsCodec struct{}

// Name is the codec's name: it replaces connect's own "proto" codec.
func (recordsCodec) Name() string { return "proto" }

// Marshal encodes message as proto.Marshal does.
func (c recordsCodec) Marshal(message any) ([]byte, error) {
	if b, ok := appendPage(nil, message); ok {
		if b == nil { // an empty message, which proto.Marshal encodes as non-nil
			b = []byte{}
		}
		return b, nil
	}
	m, err := asProto(message)
	if err != nil {
		return nil, err
	}
	return proto.Marshal(m)
}

// MarshalAppend appends the encoding of message to dst, as connect's own
// codec does with proto.MarshalOptions.MarshalAppend. Connect calls it for
// every enveloped (gRPC, gRPC-Web, Connect streaming) message.
func (recordsCodec) MarshalAppend(dst []byte, message any) ([]byte, error) {
	if b, ok := appendPage(dst, message); ok {
		return b, nil
	}
	m, err := asProto(message)
	if err != nil {
		return nil, err
	}
	return proto.MarshalOptions{}.MarshalAppend(dst, m)
}

// MarshalStable encodes message deterministically, as connect's own codec
// does (Connect GET requests use it).
func (recordsCodec) MarshalStable(message any) ([]byte, error) {
	m, err := asProto(message)
	if err != nil {
		return nil, err
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}

// IsBinary reports that the encoding is binary, not text.
func (recordsCodec) IsBinary() bool { return true }

// Unmarshal decodes data into message with proto.
func (recordsCodec) Unmarshal(data []byte, message any) error {
	m, err := asProto(message)
	if err != nil {
		return err
	}
	if err := proto.Unmarshal(data, m); err != nil {
		return fmt.Errorf("unmarshal into %T: %w", message, err)
	}
	return nil
}

func asProto(message any) (proto.Message, error) {
	m, ok := message.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T doesn't implement proto.Message", message)
	}
	return m, nil
}

// appendPage appends the encoding of message to b if message is a page of
// records that the hand-written encoder can encode as proto would; ok is
// false, and b unchanged, otherwise.
func appendPage(b []byte, message any) (_ []byte, ok bool) {
	if !encoderFitsMessages {
		return b, false
	}
	var p page
	switch m := message.(type) {
	case *imagerecordsv1.StreamImageModifiedRecordsResponse:
		if m == nil || len(m.ProtoReflect().GetUnknown()) > 0 {
			return b, false
		}
		p = page{m.Records, m.ResumeToken, m.TotalCount, m.RequestId}
	case *imagerecordsv1.ListImageModifiedRecordsResponse:
		if m == nil || len(m.ProtoReflect().GetUnknown()) > 0 {
			return b, false
		}
		p = page{m.Records, m.NextPageToken, m.TotalCount, m.RequestId}
	default:
		return b, false
	}
	var sizes [maxPageRecords]int
	size, ok := p.size(sizes[:0])
	if !ok {
		return b, false
	}
	b = slices.Grow(b, size)
	return p.append(b, sizes[:0]), true
}

// maxPageRecords is the most records an upstream page has: the records of
// a page larger than that have their sizes worked out twice, once to size
// the page and once to write them.
const maxPageRecords = 100

// page is the shape StreamImageModifiedRecordsResponse and
// ListImageModifiedRecordsResponse share: records (1), a page token (2),
// total_count (3) and request_id (4).
type page struct {
	records   []*imagerecordsv1.ImageModifiedRecord
	token     string
	total     int32
	requestID string
}

// Wire tags: the field number shifted left by 3, or'ed with the wire type.
// Every field number is below 16, so every tag is one byte.
const (
	tagPageRecords   = 1<<3 | byte(protowire.BytesType)
	tagPageToken     = 2<<3 | byte(protowire.BytesType)
	tagPageTotal     = 3<<3 | byte(protowire.VarintType)
	tagPageRequestID = 4<<3 | byte(protowire.BytesType)

	tagRecordStatus         = 1<<3 | byte(protowire.VarintType)
	tagRecordUpstreamStatus = 2<<3 | byte(protowire.VarintType)
	tagRecordUpdateTime     = 3<<3 | byte(protowire.BytesType)
	tagRecordImageID        = 4<<3 | byte(protowire.BytesType)
	tagRecordImageName      = 5<<3 | byte(protowire.BytesType)
	tagRecordNewImageID     = 6<<3 | byte(protowire.BytesType)
	tagRecordNewImageName   = 7<<3 | byte(protowire.BytesType)
	tagRecordReason         = 8<<3 | byte(protowire.BytesType)

	tagTimestampSeconds = 1<<3 | byte(protowire.VarintType)
	tagTimestampNanos   = 2<<3 | byte(protowire.VarintType)
)

// size is the length of p's encoding; ok is false if p has something
// only proto may encode: a nil record, unknown fields, or a string that
// is not valid UTF-8. It appends the size of each record to sizes while
// they fit in its capacity.
func (p *page) size(sizes []int) (n int, ok bool) {
	for _, r := range p.records {
		if r == nil || len(r.ProtoReflect().GetUnknown()) > 0 ||
			r.UpdateTime != nil && len(r.UpdateTime.ProtoReflect().GetUnknown()) > 0 ||
			!allValidUTF8(r.ImageId, r.ImageName, r.NewImageId, r.NewImageName, r.Reason) {
			return 0, false
		}
		rn := recordSize(r)
		if len(sizes) < cap(sizes) {
			sizes = append(sizes, rn)
		}
		n += 1 + protowire.SizeVarint(uint64(rn)) + rn
	}
	if !allValidUTF8(p.token, p.requestID) {
		return 0, false
	}
	n += stringSize(p.token) + varintFieldSize(p.total) + stringSize(p.requestID)
	return n, true
}

// allValidUTF8 reports whether every string of ss is valid UTF-8, as
// proto requires of proto3 strings. (utf8.ValidString takes ASCII 8 bytes
// at a time.)
func allValidUTF8(ss ...string) bool {
	for _, s := range ss {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}

// append appends p's encoding, in field-number order as proto writes it.
// sizes[:cap(sizes)] are the sizes of the first records, as size found them.
func (p *page) append(b []byte, sizes []int) []byte {
	sizes = sizes[:cap(sizes)]
	for i, r := range p.records {
		var rn int
		if i < len(sizes) {
			rn = sizes[i]
		} else {
			rn = recordSize(r)
		}
		b = append(b, tagPageRecords)
		b = appendVarint(b, uint64(rn))
		b = appendRecord(b, r)
	}
	b = appendString(b, tagPageToken, p.token)
	b = appendVarintField(b, tagPageTotal, p.total)
	return appendString(b, tagPageRequestID, p.requestID)
}

func recordSize(r *imagerecordsv1.ImageModifiedRecord) int {
	n := varintFieldSize(int32(r.Status))
	if r.UpstreamStatus != nil {
		n += 1 + protowire.SizeVarint(uint64(int64(*r.UpstreamStatus)))
	}
	if r.UpdateTime != nil {
		tn := timestampSize(r.UpdateTime)
		n += 1 + protowire.SizeVarint(uint64(tn)) + tn
	}
	return n + stringSize(r.ImageId) + stringSize(r.ImageName) + stringSize(r.NewImageId) +
		stringSize(r.NewImageName) + stringSize(r.Reason)
}

func appendRecord(b []byte, r *imagerecordsv1.ImageModifiedRecord) []byte {
	b = appendVarintField(b, tagRecordStatus, int32(r.Status))
	if r.UpstreamStatus != nil { // explicit presence: written even when 0
		b = append(b, tagRecordUpstreamStatus)
		b = appendVarint(b, uint64(int64(*r.UpstreamStatus)))
	}
	if r.UpdateTime != nil {
		b = append(b, tagRecordUpdateTime)
		b = appendVarint(b, uint64(timestampSize(r.UpdateTime)))
		if r.UpdateTime.Seconds != 0 {
			b = append(b, tagTimestampSeconds)
			b = appendVarint(b, uint64(r.UpdateTime.Seconds))
		}
		b = appendVarintField(b, tagTimestampNanos, r.UpdateTime.Nanos)
	}
	b = appendString(b, tagRecordImageID, r.ImageId)
	b = appendString(b, tagRecordImageName, r.ImageName)
	b = appendString(b, tagRecordNewImageID, r.NewImageId)
	b = appendString(b, tagRecordNewImageName, r.NewImageName)
	return appendString(b, tagRecordReason, r.Reason)
}

func timestampSize(t *timestamppb.Timestamp) int {
	n := varintFieldSize(t.Nanos)
	if t.Seconds != 0 {
		n += 1 + protowire.SizeVarint(uint64(t.Seconds))
	}
	return n
}

// varintFieldSize is the size of an int32 (or enum) field without
// presence: nothing when v is 0. A negative v takes 10 bytes, as int32
// values are sign-extended to 64 bits on the wire.
func varintFieldSize(v int32) int {
	if v == 0 {
		return 0
	}
	return 1 + protowire.SizeVarint(uint64(int64(v)))
}

func appendVarintField(b []byte, tag byte, v int32) []byte {
	if v == 0 {
		return b
	}
	return appendVarint(append(b, tag), uint64(int64(v)))
}

// appendVarint appends v as a varint. Most values the encoder writes
// (string lengths, statuses) take one byte, written inline;
// protowire.AppendVarint, too large to inline, writes the others.
func appendVarint(b []byte, v uint64) []byte {
	if v < 0x80 {
		return append(b, byte(v))
	}
	return protowire.AppendVarint(b, v)
}

// stringSize is the size of a string field without presence: nothing
// when s is empty.
func stringSize(s string) int {
	if s == "" {
		return 0
	}
	return 1 + protowire.SizeVarint(uint64(len(s))) + len(s)
}

func appendString(b []byte, tag byte, s string) []byte {
	if s == "" {
		return b
	}
	b = appendVarint(append(b, tag), uint64(len(s)))
	return append(b, s...)
}

// encodedField is a field the hand-written encoder writes, as its
// message's descriptor must declare it.
type encodedField struct {
	number   protoreflect.FieldNumber
	name     protoreflect.Name
	kind     protoreflect.Kind
	list     bool
	presence bool                  // explicit presence (proto3 optional, or a message)
	message  protoreflect.FullName // the message of a message field
}

// encodedFields are the messages the hand-written encoder writes and
// every field it writes of each, in field-number order. If the generated
// code no longer declares exactly these fields (one added, renumbered,
// retyped), the encoder steps aside and proto encodes every message; a
// test fails first.
var encodedFields = map[protoreflect.FullName][]encodedField{
	"ecd.imagerecords.v1.StreamImageModifiedRecordsResponse": pageFields("resume_token"),
	"ecd.imagerecords.v1.ListImageModifiedRecordsResponse":   pageFields("next_page_token"),
	"ecd.imagerecords.v1.ImageModifiedRecord": {
		{1, "status", protoreflect.EnumKind, false, false, ""},
		{2, "upstream_status", protoreflect.Int32Kind, false, true, ""},
		{3, "update_time", protoreflect.MessageKind, false, true, "google.protobuf.Timestamp"},
		{4, "image_id", protoreflect.StringKind, false, false, ""},
		{5, "image_name", protoreflect.StringKind, false, false, ""},
		{6, "new_image_id", protoreflect.StringKind, false, false, ""},
		{7, "new_image_name", protoreflect.StringKind, false, false, ""},
		{8, "reason", protoreflect.StringKind, false, false, ""},
	},
	"google.protobuf.Timestamp": {
		{1, "seconds", protoreflect.Int64Kind, false, false, ""},
		{2, "nanos", protoreflect.Int32Kind, false, false, ""},
	},
}

func pageFields(token protoreflect.Name) []encodedField {
	return []encodedField{
		{1, "records", protoreflect.MessageKind, true, false, "ecd.imagerecords.v1.ImageModifiedRecord"},
		{2, token, protoreflect.StringKind, false, false, ""},
		{3, "total_count", protoreflect.Int32Kind, false, false, ""},
		{4, "request_id", protoreflect.StringKind, false, false, ""},
	}
}

// encodedMessages are the descriptors of the messages in encodedFields.
var encodedMessages = []protoreflect.MessageDescriptor{
	(*imagerecordsv1.StreamImageModifiedRecordsResponse)(nil).ProtoReflect().Descriptor(),
	(*imagerecordsv1.ListImageModifiedRecordsResponse)(nil).ProtoReflect().Descriptor(),
	(*imagerecordsv1.ImageModifiedRecord)(nil).ProtoReflect().Descriptor(),
	(*timestamppb.Timestamp)(nil).ProtoReflect().Descriptor(),
}

// encoderFitsMessages is whether the generated messages declare exactly
// the fields the hand-written encoder writes.
var encoderFitsMessages = checkEncodedFields() == nil

// checkEncodedFields compares the descriptors of the encoded messages
// with encodedFields and returns the first difference.
func checkEncodedFields() error {
	var errs []error
	for _, md := range encodedMessages {
		want, ok := encodedFields[md.FullName()]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: not in encodedFields", md.FullName()))
			continue
		}
		fields := md.Fields()
		if fields.Len() != len(want) {
			errs = append(errs, fmt.Errorf("%s: %d fields, the encoder writes %d", md.FullName(), fields.Len(), len(want)))
		}
		for _, w := range want {
			fd := fields.ByNumber(w.number)
			if fd == nil {
				errs = append(errs, fmt.Errorf("%s: no field %d (%s)", md.FullName(), w.number, w.name))
				continue
			}
			got := encodedField{fd.Number(), fd.Name(), fd.Kind(), fd.IsList(), fd.HasPresence(), ""}
			if fd.Message() != nil {
				got.message = fd.Message().FullName()
			}
			if got != w || fd.IsMap() || fd.IsPacked() {
				errs = append(errs, fmt.Errorf("%s: field %v, the encoder writes %v", md.FullName(), got, w))
			}
			if fd.ContainingOneof() != nil && !fd.ContainingOneof().IsSynthetic() {
				errs = append(errs, fmt.Errorf("%s: field %s is in a oneof", md.FullName(), fd.Name()))
			}
		}
	}
	return errors.Join(errs...)
}
