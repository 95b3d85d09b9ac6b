package service

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"maps"
	"math/bits"
	"slices"
	"strings"

	"github.com/imagerecords/imagerecords/upstream"
)

// A fleet resume token carries what the caller of a fleet has been told:
// which desktops are finished, where each desktop in progress stands, and
// the running counts of the summary. Its payload, sealed by TokenKeys.seal
// (kind kindFleet, bound to the region and the sorted desktop set), is
//
//	uvarint desktops | uvarint ok | uvarint failed | uvarint records | uvarint calls
//	finished bitmap: ⌈desktops/8⌉ bytes, bit i (LSB first) for desktop i of the sorted list
//	uvarint entries, then for each desktop in progress, by increasing index:
//	  uvarint index | uvarint records | uvarint skip<<1 | finished | uvarint len | NextToken
//
// A desktop is in progress once a message with its records was sent and
// until its FleetDesktopDone or FleetDesktopError was; a desktop whose
// pages were fetched but not sent has no entry and starts again. At most
// MaxFleetConcurrency desktops are in progress, so a token is at most
// 5 + 50 + ⌈desktops/8⌉ + 2 + in progress × (17 + len(NextToken)) bytes
// before base64 (TestFleetTokenSize): for 1,000 desktops, 16 in progress
// and ECD's NextTokens of about 50 bytes, 1,372 characters; 64 in
// progress, 4,892; at the hard worst (64 in progress with NextTokens of
// the 1 KiB the client accepts) 88,092.

// MaxFleetDesktops is the most distinct desktops one fleet call accepts.
const MaxFleetDesktops = 1000

// MaxFleetConcurrency bounds the desktops a fleet call pages at once, and
// so the desktops in progress that a fleet token carries.
const MaxFleetConcurrency = 64

// maxFleetTokenLength bounds a fleet page_token before decoding: the
// longest token encodeFleetToken can make, in base64 characters.
const maxFleetTokenLength = (fleetTokenMaxBytes*4 + 2) / 3

const fleetTokenMaxBytes = 1 + 4 + 5*binary.MaxVarintLen64 + (MaxFleetDesktops+7)/8 + 2 +
	MaxFleetConcurrency*(2+binary.MaxVarintLen64+3+2+upstream.MaxNextTokenLength)

var (
	errFleetTokenMalformed = errors.New("page_token is not a fleet token this gateway issued")
	errFleetTokenOtherSet  = errors.New("page_token belongs to another region or set of desktop ids")
)

// fleetProgress is where a desktop in progress stands, as its caller was
// told.
type fleetProgress struct {
	// records counts the desktop's records sent.
	records int64
	// cursor is where its records continue; zero when finished.
	cursor upstream.Cursor
	// finished: every record was sent, the FleetDesktopDone not yet.
	finished bool
}

// fleetState is what the caller of a fleet has been told, in this call and
// the calls it resumes.
type fleetState struct {
	desktops   int
	finished   []byte // bitmap: desktops done or failed
	ok, failed int
	records    int64
	calls      int64
	progress   map[int]*fleetProgress // desktops in progress, by index
}

func newFleetState(desktops int) *fleetState {
	return &fleetState{desktops: desktops, finished: make([]byte, (desktops+7)/8), progress: map[int]*fleetProgress{}}
}

func (st *fleetState) isFinished(i int) bool { return st.finished[i/8]&(1<<(i%8)) != 0 }

// finish records that desktop i ended, well or not.
func (st *fleetState) finish(i int, ok bool) {
	st.finished[i/8] |= 1 << (i % 8)
	delete(st.progress, i)
	if ok {
		st.ok++
	} else {
		st.failed++
	}
}

// complete reports whether every desktop ended.
func (st *fleetState) complete() bool { return st.ok+st.failed == st.desktops }

// fleetScope is what a fleet token is bound to: the region and a digest of
// the sorted, de-duplicated desktop ids.
func fleetScope(region string, ids []string) string {
	sum := sha256.Sum256([]byte(strings.Join(ids, "\x00")))
	return "fleet\x00" + region + "\x00" + string(sum[:])
}

// encodeFleetToken returns the token of st for scope, sealed with k.
func encodeFleetToken(k *TokenKeys, scope string, st *fleetState) string {
	return k.seal(kindFleet, scope, st.appendPayload(nil))
}

func (st *fleetState) appendPayload(b []byte) []byte {
	for _, v := range []uint64{uint64(st.desktops), uint64(st.ok), uint64(st.failed), uint64(st.records), uint64(st.calls)} {
		b = binary.AppendUvarint(b, v)
	}
	b = append(b, st.finished...)
	b = binary.AppendUvarint(b, uint64(len(st.progress)))
	for _, i := range slices.Sorted(maps.Keys(st.progress)) {
		p := st.progress[i]
		flag := uint64(0)
		if p.finished {
			flag = 1
		}
		b = binary.AppendUvarint(b, uint64(i))
		b = binary.AppendUvarint(b, uint64(p.records))
		b = binary.AppendUvarint(b, uint64(p.cursor.Skip)<<1|flag)
		b = binary.AppendUvarint(b, uint64(len(p.cursor.Token)))
		b = append(b, p.cursor.Token...)
	}
	return b
}

// decodeFleetToken parses a token of encodeFleetToken for scope and a set
// of desktops desktops; "" is the start. Like decodeToken it accepts only
// the exact spelling encodeFleetToken makes.
func decodeFleetToken(k *TokenKeys, scope string, desktops int, token string) (*fleetState, error) {
	if token == "" {
		return newFleetState(desktops), nil
	}
	b, err := k.open(kindFleet, scope, token, maxFleetTokenLength)
	switch {
	case errors.Is(err, errTokenInvalid):
		return nil, errFleetTokenOtherSet
	case errors.Is(err, errTokenMalformed):
		return nil, errFleetTokenMalformed
	case err != nil:
		return nil, err // unsigned, or another key: the message says what to do
	}
	st, ok := parseFleetPayload(b, desktops)
	if !ok || encodeFleetToken(k, scope, st) != token {
		return nil, errFleetTokenMalformed
	}
	return st, nil
}

// parseFleetPayload reads a payload and checks that it makes sense for
// desktops desktops.
func parseFleetPayload(b []byte, desktops int) (*fleetState, bool) {
	r := payloadReader{b: b}
	var head [5]uint64
	for k := range head {
		head[k] = r.uvarint()
	}
	if r.bad || head[0] != uint64(desktops) || head[1]+head[2] > uint64(desktops) || head[3] > 1<<53 || head[4] > 1<<53 {
		return nil, false
	}
	st := newFleetState(desktops)
	st.ok, st.failed, st.records, st.calls = int(head[1]), int(head[2]), int64(head[3]), int64(head[4])
	if !r.read(st.finished) {
		return nil, false
	}
	finished := 0
	for _, x := range st.finished {
		finished += bits.OnesCount8(x)
	}
	if finished != st.ok+st.failed || (desktops%8 != 0 && st.finished[len(st.finished)-1]>>(desktops%8) != 0) {
		return nil, false
	}
	entries := r.uvarint()
	if r.bad || entries > MaxFleetConcurrency {
		return nil, false
	}
	last := -1
	for range entries {
		i, records, flag, n := r.uvarint(), r.uvarint(), r.uvarint(), r.uvarint()
		if r.bad || i >= uint64(desktops) || int(i) <= last || st.isFinished(int(i)) || records > 1<<53 ||
			flag>>1 >= maxSkip || n > upstream.MaxNextTokenLength {
			return nil, false
		}
		token := make([]byte, n)
		if !r.read(token) {
			return nil, false
		}
		p := &fleetProgress{records: int64(records), finished: flag&1 == 1,
			cursor: upstream.Cursor{Token: string(token), Skip: int(flag >> 1)}}
		if p.finished != (p.cursor == upstream.Cursor{}) {
			return nil, false // a finished desktop has nothing left; another has a position
		}
		last = int(i)
		st.progress[last] = p
	}
	return st, len(r.b) == 0
}

// payloadReader reads a token payload; bad records a short or malformed
// read, after which reads return zero.
type payloadReader struct {
	b   []byte
	bad bool
}

func (r *payloadReader) uvarint() uint64 {
	if r.bad {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.bad = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *payloadReader) read(dst []byte) bool {
	if r.bad || len(r.b) < len(dst) {
		r.bad = true
		return false
	}
	copy(dst, r.b)
	r.b = r.b[len(dst):]
	return true
}
