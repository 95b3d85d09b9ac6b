package gateway_test

import (
	"bytes"
	"encoding/binary"
	"math"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/service/gateway"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

const codecDesktopID = "ecd-bd53sfmysz8ir0001"

// simulatedRecords returns the simulator's first n records of a desktop
// as the service converts them: names and reasons with non-ASCII text,
// millisecond timestamps, every status.
func simulatedRecords(tb testing.TB, n int) []*imagerecordsv1.ImageModifiedRecord {
	tb.Helper()
	sim, _ := gatewaytest.Simulator(tb, ecdsim.Config{Desktops: []ecdsim.Desktop{{ID: codecDesktopID, Records: n}}})
	out := make([]*imagerecordsv1.ImageModifiedRecord, n)
	for i := range out {
		r, ok := sim.Record(codecDesktopID, i)
		if !ok {
			tb.Fatalf("the simulator has no record %d", i)
		}
		at, err := time.Parse(time.RFC3339Nano, r.UpdateTime)
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = &imagerecordsv1.ImageModifiedRecord{
			Status:         gatewaytest.Status(r.Status),
			UpstreamStatus: proto.Int32(int32(r.Status)),
			UpdateTime:     timestamppb.New(at),
			ImageId:        r.ImageID,
			ImageName:      r.ImageName,
			NewImageId:     r.NewImageID,
			NewImageName:   r.NewImageName,
			Reason:         r.Reason,
		}
	}
	return out
}

// streamPage is a full stream message of simulated records.
func streamPage(tb testing.TB, n int) *imagerecordsv1.StreamImageModifiedRecordsResponse {
	return &imagerecordsv1.StreamImageModifiedRecordsResponse{
		Records:     simulatedRecords(tb, n),
		ResumeToken: "CAESEGVjZC1iZDUzc2ZteXN6OGlyMDAwMRoEdDEwMCIMYmQ1M3NmbXlzejhp",
		TotalCount:  1000,
		RequestId:   "4D9137BD-02B3-79DB-6953-292218271000",
	}
}

// unknownField is a valid encoding of a field no message declares.
var unknownField = protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 7)

func withUnknown[M proto.Message](m M) M {
	m.ProtoReflect().SetUnknown(bytes.Clone(unknownField))
	return m
}

// checkMatchesProto fails unless the codec encodes m as proto does, with
// Marshal and with MarshalAppend (after a prefix, as connect appends to a
// pooled buffer): the same bytes, or an error where proto has one.
func checkMatchesProto(t *testing.T, m proto.Message) {
	t.Helper()
	want, wantErr := proto.Marshal(m)
	got, err := gateway.RecordsCodec.Marshal(m)
	if (err != nil) != (wantErr != nil) || !bytes.Equal(got, want) || (got == nil) != (want == nil) {
		t.Fatalf("Marshal: %x, %v\nproto.Marshal: %x, %v", got, err, want, wantErr)
	}
	prefix := []byte("prefix")
	wantAppended, wantErr := proto.MarshalOptions{}.MarshalAppend(bytes.Clone(prefix), m)
	appended, err := gateway.RecordsCodec.(interface {
		MarshalAppend([]byte, any) ([]byte, error)
	}).MarshalAppend(bytes.Clone(prefix), m)
	if (err != nil) != (wantErr != nil) || !bytes.Equal(appended, wantAppended) {
		t.Fatalf("MarshalAppend: %x, %v\nproto: %x, %v", appended, err, wantAppended, wantErr)
	}
}

// TestRecordsCodecEncodesAsProto: for pages the hand-written encoder
// takes (and for those it leaves to proto), the codec's bytes are
// proto.Marshal's, they decode to an equal message, and invalid UTF-8
// fails as proto fails it.
func TestRecordsCodecEncodesAsProto(t *testing.T) {
	t.Parallel()
	full := streamPage(t, 100)
	list := &imagerecordsv1.ListImageModifiedRecordsResponse{
		Records: simulatedRecords(t, 10), NextPageToken: "t1", TotalCount: 10, RequestId: "req",
	}
	zeroRecord := &imagerecordsv1.ImageModifiedRecord{}
	negative := &imagerecordsv1.ImageModifiedRecord{
		Status:         imagerecordsv1.ImageModificationStatus(-3),
		UpstreamStatus: proto.Int32(math.MinInt32),
		UpdateTime:     &timestamppb.Timestamp{Seconds: -62135596800, Nanos: -1},
		Reason:         "x",
	}
	presentZeros := &imagerecordsv1.ImageModifiedRecord{UpstreamStatus: proto.Int32(0), UpdateTime: &timestamppb.Timestamp{}}
	long := &imagerecordsv1.ImageModifiedRecord{ImageName: string(bytes.Repeat([]byte("镜像"), 3000))} // a 2-byte length inside a 3-byte record length
	testCases := []struct {
		name    string
		message proto.Message
		byHand  bool
		fails   bool
	}{
		{name: "stream page of 100 simulated records", message: full, byHand: true},
		{name: "list page", message: list, byHand: true},
		{name: "more records than an upstream page has", message: streamPage(t, 150), byHand: true},
		{name: "empty stream message", message: &imagerecordsv1.StreamImageModifiedRecordsResponse{}, byHand: true},
		{name: "empty list message", message: &imagerecordsv1.ListImageModifiedRecordsResponse{}, byHand: true},
		{name: "record with every field unset", message: &imagerecordsv1.StreamImageModifiedRecordsResponse{
			Records: []*imagerecordsv1.ImageModifiedRecord{zeroRecord, zeroRecord}}, byHand: true},
		{name: "negative numbers", message: &imagerecordsv1.ListImageModifiedRecordsResponse{
			Records: []*imagerecordsv1.ImageModifiedRecord{negative}, TotalCount: -1}, byHand: true},
		{name: "upstream_status 0 and a zero timestamp are present", message: &imagerecordsv1.StreamImageModifiedRecordsResponse{
			Records: []*imagerecordsv1.ImageModifiedRecord{presentZeros}}, byHand: true},
		{name: "long strings", message: &imagerecordsv1.StreamImageModifiedRecordsResponse{
			Records: []*imagerecordsv1.ImageModifiedRecord{long}, RequestId: string(bytes.Repeat([]byte("r"), 200))}, byHand: true},
		{name: "invalid UTF-8 in a record", message: &imagerecordsv1.StreamImageModifiedRecordsResponse{
			Records: []*imagerecordsv1.ImageModifiedRecord{{ImageName: "caf\xe9"}}}, fails: true},
		{name: "invalid UTF-8 in the token", message: &imagerecordsv1.ListImageModifiedRecordsResponse{
			NextPageToken: "\xff"}, fails: true},
		{name: "nil record", message: &imagerecordsv1.StreamImageModifiedRecordsResponse{
			Records: []*imagerecordsv1.ImageModifiedRecord{zeroRecord, nil}}},
		{name: "unknown fields on the page", message: withUnknown(&imagerecordsv1.StreamImageModifiedRecordsResponse{
			Records: []*imagerecordsv1.ImageModifiedRecord{zeroRecord}})},
		{name: "unknown fields on a record", message: &imagerecordsv1.ListImageModifiedRecordsResponse{
			Records: []*imagerecordsv1.ImageModifiedRecord{withUnknown(&imagerecordsv1.ImageModifiedRecord{ImageId: "m-1"})}}},
		{name: "unknown fields on a timestamp", message: &imagerecordsv1.StreamImageModifiedRecordsResponse{
			Records: []*imagerecordsv1.ImageModifiedRecord{{UpdateTime: withUnknown(timestamppb.New(time.Unix(1, 2)))}}}},
		{name: "another message", message: &imagerecordsv1.StreamImageModifiedRecordsRequest{
			RegionId: "cn-hangzhou", DesktopId: codecDesktopID, MaxRecords: -5}},
		{name: "a nil page", message: (*imagerecordsv1.StreamImageModifiedRecordsResponse)(nil)},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := gateway.EncodesByHand(tc.message); got != tc.byHand {
				t.Errorf("encoded by hand: %v, want %v", got, tc.byHand)
			}
			checkMatchesProto(t, tc.message)
			b, err := gateway.RecordsCodec.Marshal(tc.message)
			if (err != nil) != tc.fails {
				t.Fatalf("Marshal error %v, want an error: %v", err, tc.fails)
			}
			if err != nil {
				return
			}
			decoded := tc.message.ProtoReflect().New().Interface()
			if err := gateway.RecordsCodec.Unmarshal(b, decoded); err != nil {
				t.Fatal(err)
			}
			if tc.message.ProtoReflect().IsValid() && !proto.Equal(decoded, tc.message) {
				t.Errorf("decoded %v\nwant %v", decoded, tc.message)
			}
		})
	}
}

// TestGatewayEncodesWithTheRecordsCodec: the gateway's handler lists the
// records codec in its chain, and what it encodes with it reaches gRPC
// and Connect clients (which decode with proto) as the simulator's
// records: a stream (MarshalAppend) and a List page over Connect
// (Marshal).
func TestGatewayEncodesWithTheRecordsCodec(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: []ecdsim.Desktop{{ID: codecDesktopID, Records: 250}}})
	if chain := h.Gateway.Chain(); !slices.Contains(chain, "option:codec=proto(records-encoder)") {
		t.Fatalf("the chain %q has no records codec", chain)
	}
	msgs, err := gatewaytest.Stream(t.Context(), h.Client(connect.WithGRPC()), &imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: codecDesktopID})
	if err != nil {
		t.Fatal(err)
	}
	var records []*imagerecordsv1.ImageModifiedRecord
	for _, m := range msgs {
		records = append(records, m.GetRecords()...)
	}
	if len(records) != 250 || msgs[len(msgs)-1].GetResumeToken() != "" || msgs[0].GetTotalCount() != 250 || msgs[0].GetRequestId() == "" {
		t.Fatalf("%d records in %d messages (last token %q, first total %d, request id %q), want 250 ending without a token",
			len(records), len(msgs), msgs[len(msgs)-1].GetResumeToken(), msgs[0].GetTotalCount(), msgs[0].GetRequestId())
	}
	h.CheckRecords(t, codecDesktopID, 0, records)
	page, err := h.Client().ListImageModifiedRecords(t.Context(), connect.NewRequest( // Connect protocol, binary proto
		&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: codecDesktopID, PageSize: 100}))
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Msg.GetRecords()) != 100 || page.Msg.GetNextPageToken() == "" || page.Msg.GetTotalCount() != 250 {
		t.Fatalf("List: %d records, next token %q, total %d; want 100 of 250 and a token",
			len(page.Msg.GetRecords()), page.Msg.GetNextPageToken(), page.Msg.GetTotalCount())
	}
	h.CheckRecords(t, codecDesktopID, 0, page.Msg.GetRecords())
}

// TestRecordsCodecRefusesWhatIsNotProto: like connect's own codec, the
// codec refuses a value that is not a proto message.
func TestRecordsCodecRefusesWhatIsNotProto(t *testing.T) {
	t.Parallel()
	if _, err := gateway.RecordsCodec.Marshal(struct{}{}); err == nil {
		t.Error("Marshal of a struct: no error")
	}
	if err := gateway.RecordsCodec.Unmarshal([]byte{0x08, 0x01}, new(int)); err == nil {
		t.Error("Unmarshal into an int: no error")
	}
	if err := gateway.RecordsCodec.Unmarshal([]byte{0xff}, new(imagerecordsv1.StreamImageModifiedRecordsResponse)); err == nil {
		t.Error("Unmarshal of a truncated tag: no error")
	}
}

// TestRecordsCodecKnowsEveryField: the hand-written encoder writes
// exactly the fields the generated messages declare. A field added to
// the proto (or renumbered, or retyped) fails here, and until the encoder
// learns it the codec leaves every page to proto.
func TestRecordsCodecKnowsEveryField(t *testing.T) {
	t.Parallel()
	if err := gateway.CheckEncodedFields(); err != nil {
		t.Fatalf("the encoder and the generated messages differ:\n%v", err)
	}
	for _, m := range []proto.Message{
		&imagerecordsv1.StreamImageModifiedRecordsResponse{},
		&imagerecordsv1.ListImageModifiedRecordsResponse{},
	} {
		populate(m.ProtoReflect())
		if !gateway.EncodesByHand(m) {
			t.Fatalf("%T with every field set is not encoded by hand", m)
		}
		checkMatchesProto(t, m)
	}
}

// populate sets every field m's descriptor declares to a value that is
// not its default, two elements for a list, recursively.
func populate(m protoreflect.Message) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch {
		case fd.IsList():
			list := m.Mutable(fd).List()
			for range 2 {
				if fd.Kind() == protoreflect.MessageKind {
					e := list.NewElement()
					populate(e.Message())
					list.Append(e)
				} else {
					list.Append(scalar(fd))
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			populate(m.Mutable(fd).Message())
		default:
			m.Set(fd, scalar(fd))
		}
	}
}

// scalar is a value of fd's kind that is not its default: a negative
// number where the kind has one, so that sign extension is exercised.
func scalar(fd protoreflect.FieldDescriptor) protoreflect.Value {
	n := int64(fd.Number())
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString("值 " + string(fd.Name()))
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(protoreflect.EnumNumber(-n))
	case protoreflect.Int32Kind:
		return protoreflect.ValueOfInt32(int32(-n))
	case protoreflect.Int64Kind:
		return protoreflect.ValueOfInt64(-n << 40)
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	}
	panic("populate: no value for kind " + fd.Kind().String() + " of " + string(fd.FullName()))
}

// FuzzRecordsCodecMatchesProto: for any page the bytes describe (unset
// and negative fields, upstream_status set or not, nil and zero
// timestamps, nil records, invalid UTF-8, unknown fields), the codec
// writes proto.Marshal's bytes, or fails where proto fails.
func FuzzRecordsCodecMatchesProto(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x01, 2, 't', '1', 0, 0, 0, 0, 1, 'r', 0x3f})
	f.Add([]byte{0x02, 0, 0x10, 0, 0, 0, 3, 'r', 'e', 'q', 0x26, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3, 'm', '-', '1'})
	f.Add(append([]byte{0x00, 0, 0, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}, "\xe9\x95\x9c\xff"...))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkMatchesProto(t, pageFromBytes(data))
	})
}

// fuzzBytes reads values from a fuzzer's bytes; past their end, zeros.
type fuzzBytes []byte

func (b *fuzzBytes) byte() byte {
	if len(*b) == 0 {
		return 0
	}
	c := (*b)[0]
	*b = (*b)[1:]
	return c
}

func (b *fuzzBytes) bytes(n int) []byte {
	n = min(n, len(*b))
	out := (*b)[:n]
	*b = (*b)[n:]
	return out
}

func (b *fuzzBytes) int32() int32 {
	var w [4]byte
	copy(w[:], b.bytes(4))
	return int32(binary.LittleEndian.Uint32(w[:]))
}

func (b *fuzzBytes) int64() int64 {
	var w [8]byte
	copy(w[:], b.bytes(8))
	return int64(binary.LittleEndian.Uint64(w[:]))
}

// string reads a length byte (up to 63) and that many bytes, which need
// not be UTF-8.
func (b *fuzzBytes) string() string { return string(b.bytes(int(b.byte() % 64))) }

// pageFromBytes builds a List or a stream page from data: a header byte,
// the token, total_count and request_id, then records while bytes last,
// each a flags byte and the fields the flags ask for.
func pageFromBytes(data []byte) proto.Message {
	b := fuzzBytes(data)
	header := b.byte()
	token, total, requestID := b.string(), b.int32(), b.string()
	var records []*imagerecordsv1.ImageModifiedRecord
	for len(b) > 0 && len(records) < 200 {
		flags := b.byte()
		if flags&0x01 != 0 {
			records = append(records, nil)
			continue
		}
		r := &imagerecordsv1.ImageModifiedRecord{}
		if flags&0x02 != 0 {
			r.Status = imagerecordsv1.ImageModificationStatus(b.int32())
		}
		if flags&0x04 != 0 {
			r.UpstreamStatus = proto.Int32(b.int32())
		}
		if flags&0x08 != 0 {
			r.UpdateTime = &timestamppb.Timestamp{Seconds: b.int64(), Nanos: b.int32()}
			if flags&0x10 != 0 {
				withUnknown(r.UpdateTime)
			}
		}
		if flags&0x20 != 0 {
			r.ImageId, r.ImageName, r.NewImageId, r.NewImageName, r.Reason = b.string(), b.string(), b.string(), b.string(), b.string()
		}
		if flags&0x40 != 0 {
			withUnknown(r)
		}
		records = append(records, r)
	}
	var m proto.Message
	if header&0x01 != 0 {
		m = &imagerecordsv1.ListImageModifiedRecordsResponse{Records: records, NextPageToken: token, TotalCount: total, RequestId: requestID}
	} else {
		m = &imagerecordsv1.StreamImageModifiedRecordsResponse{Records: records, ResumeToken: token, TotalCount: total, RequestId: requestID}
	}
	if header&0x02 != 0 {
		withUnknown(m)
	}
	return m
}

// BenchmarkMarshalStreamPage encodes a stream message of 100 simulated
// records as connect does, appending to a reused buffer: "proto" with
// connect's own codec (proto.MarshalOptions.MarshalAppend), "records" with
// the gateway's.
//
//	go test -run '^$' -bench MarshalStreamPage -benchmem -count 6 ./service/gateway
func BenchmarkMarshalStreamPage(b *testing.B) {
	m := streamPage(b, 100)
	codecs := []struct {
		name          string
		marshalAppend func([]byte, any) ([]byte, error)
	}{
		{"proto", func(dst []byte, m any) ([]byte, error) {
			return proto.MarshalOptions{}.MarshalAppend(dst, m.(proto.Message))
		}},
		{"records", gateway.RecordsCodec.(interface {
			MarshalAppend([]byte, any) ([]byte, error)
		}).MarshalAppend},
	}
	for _, c := range codecs {
		b.Run(c.name, func(b *testing.B) {
			var buf []byte
			for b.Loop() {
				var err error
				if buf, err = c.marshalAppend(buf[:0], m); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(int64(len(buf)))
		})
	}
}
