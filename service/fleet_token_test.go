package service

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/imagerecords/imagerecords/upstream"
)

func fleetIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("ecd-%017d", i)
	}
	return ids
}

// fleetStateWith is a state of n desktops: the first done finished (every
// third failed), and inProgress desktops after them in progress with
// NextTokens of tokenLen bytes.
func fleetStateWith(n, done, inProgress, tokenLen int) *fleetState {
	st := newFleetState(n)
	for i := range done {
		st.finish(i, i%3 != 0)
		st.records += 250
	}
	for i := done; i < done+inProgress; i++ {
		st.progress[i] = &fleetProgress{records: 100, cursor: upstream.Cursor{Token: strings.Repeat("T", tokenLen), Skip: i % 3}}
	}
	st.calls = 1234
	return st
}

func TestFleetTokenRoundTrip(t *testing.T) {
	t.Parallel()
	ids := fleetIDs(1000)
	scope := fleetScope("cn-hangzhou", ids)
	finishedPending := fleetStateWith(10, 3, 0, 0)
	finishedPending.progress[7] = &fleetProgress{records: 42, finished: true}
	testCases := []struct {
		name string
		st   *fleetState
	}{
		{"start", newFleetState(1000)},
		{"some done, some in progress", fleetStateWith(1000, 300, 16, 48)},
		{"a desktop whose done message is pending", finishedPending},
		{"all done", fleetStateWith(1000, 1000, 0, 0)},
		{"one desktop", fleetStateWith(1, 0, 1, 28)},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tok := encodeFleetToken(fleetKeys, scope, tc.st)
			got, err := decodeFleetToken(fleetKeys, scope, tc.st.desktops, tok)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if again := encodeFleetToken(fleetKeys, scope, got); again != tok {
				t.Fatalf("the decoded state encodes differently")
			}
			if got.ok != tc.st.ok || got.failed != tc.st.failed || got.records != tc.st.records || got.calls != tc.st.calls || len(got.progress) != len(tc.st.progress) {
				t.Fatalf("decoded %+v, want %+v", got, tc.st)
			}
			for i, p := range tc.st.progress {
				if q := got.progress[i]; q == nil || *q != *p {
					t.Fatalf("progress of %d = %+v, want %+v", i, q, p)
				}
			}
			if _, err := decodeFleetToken(fleetKeys, fleetScope("cn-hangzhou", ids[1:]), tc.st.desktops, tok); err != errFleetTokenOtherSet {
				t.Errorf("another desktop set accepted the token: %v", err)
			}
			if _, err := decodeFleetToken(fleetKeys, fleetScope("cn-shanghai", ids), tc.st.desktops, tok); err != errFleetTokenOtherSet {
				t.Errorf("another region accepted the token: %v", err)
			}
		})
	}
}

// TestFleetTokenSize states how big a fleet token gets for 1,000 desktops.
func TestFleetTokenSize(t *testing.T) {
	t.Parallel()
	ids := fleetIDs(1000)
	scope := fleetScope("cn-hangzhou", ids)
	testCases := []struct {
		name                 string
		inProgress, tokenLen int
		atMost               int
	}{
		// ECD's NextTokens are about 50 bytes; the default concurrency is 16.
		{"16 in progress, 50-byte NextTokens", DefaultFleetConcurrency, 50, 1600},
		{"64 in progress, 50-byte NextTokens", MaxFleetConcurrency, 50, 5000},
		// The worst the client accepts: 64 in progress, 1 KiB NextTokens.
		{"64 in progress, 1 KiB NextTokens", MaxFleetConcurrency, upstream.MaxNextTokenLength, maxFleetTokenLength},
	}
	for _, tc := range testCases {
		st := fleetStateWith(1000, 500, tc.inProgress, tc.tokenLen)
		st.records, st.calls = 1<<40, 1<<40
		tok := encodeFleetToken(fleetKeys, scope, st)
		if len(tok) > tc.atMost {
			t.Errorf("%s: token of %d characters, want at most %d", tc.name, len(tok), tc.atMost)
		}
		if _, err := decodeFleetToken(fleetKeys, scope, 1000, tok); err != nil {
			t.Errorf("%s: the gateway refuses its own token of %d characters: %v", tc.name, len(tok), err)
		}
		t.Logf("%s: %d characters", tc.name, len(tok))
	}
}

func TestDecodeFleetTokenRejectsJunk(t *testing.T) {
	t.Parallel()
	ids := fleetIDs(10)
	scope := fleetScope("cn-hangzhou", ids)
	good := fleetStateWith(10, 3, 2, 20)
	payload := good.appendPayload(nil)
	seal := func(b []byte) string { return fleetKeys.seal(kindFleet, scope, b) }
	testCases := map[string]string{
		"junk":                      "junk!",
		"a page token":              fleetKeys.sealCursor("cn-hangzhou", ids[0], upstream.Cursor{Token: "x"}),
		"truncated":                 seal(payload[:len(payload)-1]),
		"trailing bytes":            seal(append(payload, 0)),
		"another desktop count":     encodeFleetToken(fleetKeys, scope, fleetStateWith(11, 3, 2, 20)),
		"counts that do not add up": seal(func() []byte { st := fleetStateWith(10, 3, 2, 20); st.ok++; return st.appendPayload(nil) }()),
		"a bit past the last desktop": seal(func() []byte {
			st := fleetStateWith(10, 3, 2, 20)
			st.finished[1] |= 0x80
			st.ok++
			return st.appendPayload(nil)
		}()),
		"a finished desktop in progress": seal(func() []byte {
			st := fleetStateWith(10, 3, 0, 0)
			st.progress[1] = &fleetProgress{cursor: upstream.Cursor{Token: "x"}}
			return st.appendPayload(nil)
		}()),
		"in progress at the start": seal(func() []byte {
			st := fleetStateWith(10, 3, 0, 0)
			st.progress[5] = &fleetProgress{records: 3}
			return st.appendPayload(nil)
		}()),
		"too long": strings.Repeat("A", maxFleetTokenLength+1),
		"padded":   base64.URLEncoding.EncodeToString([]byte{tokenVersion, kindFleet, 0, 0, 0, 0}),
	}
	for name, tok := range testCases {
		if st, err := decodeFleetToken(fleetKeys, scope, 10, tok); err == nil {
			t.Errorf("%s: decoded %+v, want an error", name, st)
		}
	}
}

// FuzzDecodeFleetToken decodes arbitrary fleet tokens: decodeFleetToken
// must never panic, fail only with its errors (malformed, another set, an
// unsigned token of an earlier version, a key it does not hold), and accept only what
// encodeFleetToken makes.
func FuzzDecodeFleetToken(f *testing.F) {
	ids := fleetIDs(10)
	scope := fleetScope("cn-hangzhou", ids)
	f.Add(encodeFleetToken(fleetKeys, scope, fleetStateWith(10, 3, 2, 20)))
	f.Add(encodeFleetToken(fleetKeys, scope, fleetStateWith(10, 10, 0, 0)))
	f.Add(encodeFleetToken(fleetKeys, scope, newFleetState(10)))
	f.Add("AgAAAAA")
	f.Fuzz(func(t *testing.T, tok string) {
		st, err := decodeFleetToken(fleetKeys, scope, 10, tok)
		switch {
		case err == errFleetTokenMalformed || err == errFleetTokenOtherSet || err == errTokenUnsigned || err == errTokenKey:
		case err != nil:
			t.Fatalf("unexpected error %v", err)
		case tok != "" && encodeFleetToken(fleetKeys, scope, st) != tok:
			t.Fatalf("accepted a spelling encodeFleetToken does not make: %q", tok)
		}
	})
}

// fleetKeys seal the fleet tokens of these tests. The key is fixed, not
// random: the fuzzer runs its inputs in worker processes, which must open
// the seeds this process sealed.
var fleetKeys = func() *TokenKeys {
	k, err := NewTokenKeys([]byte("fleet-token-tests-fixed-key-0001"))
	if err != nil {
		panic(err)
	}
	return k
}()
