package ecdsim

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"
)

func TestNonceStoreBounded(t *testing.T) {
	t.Parallel()
	s := newNonceStore()
	const window = 100
	if !s.use("k", "a", 0, window) || s.use("k", "a", 50, window) {
		t.Fatal("nonce a: first use refused or reuse accepted")
	}
	if !s.use("k2", "a", 50, window) {
		t.Fatal("nonces are per key")
	}
	// After the window, a is forgotten (pruned) and accepted again.
	if !s.use("k", "b", 101, window) || s.len() != 2 {
		t.Fatalf("expired nonce not pruned: %d remembered", s.len())
	}
	if !s.use("k", "a", 160, window) {
		t.Fatal("expired nonce refused")
	}
	// The count never exceeds maxNonces, even inside the window.
	for i := range maxNonces + 100 {
		s.use("k", strconv.Itoa(i), 200, window)
	}
	if n := s.len(); n != maxNonces {
		t.Fatalf("%d nonces remembered, want %d", n, maxNonces)
	}
	if s.use("k", strconv.Itoa(maxNonces+99), 200, window) {
		t.Fatal("recent nonce forgotten")
	}
}

func TestRecordJSONMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	dh := desktopHash(1, "ecd-x")
	for i := range 500 {
		p := genRecord(dh, i)
		want, err := json.Marshal(p.record())
		if err != nil {
			t.Fatal(err)
		}
		if got := p.appendJSON(nil); string(got) != string(want) {
			t.Fatalf("record %d:\n got %s\nwant %s", i, got, want)
		}
	}
}

func TestAppendJSONString(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "plain", `q"uo\te`, "tab\tnl\ncr\r\x00\x1f", "镜像 «x»", "\u2028\u2029", "bad\xffutf8", "<&>"} {
		var back string
		if err := json.Unmarshal(appendJSONString(nil, s), &back); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		want, _ := json.Marshal(s)
		var wantBack string
		_ = json.Unmarshal(want, &wantBack)
		if back != wantBack {
			t.Errorf("%q round-trips to %q, want %q", s, back, wantBack)
		}
	}
}

func TestTokenRoundTrip(t *testing.T) {
	t.Parallel()
	c := newTokenCodec(1)
	for _, off := range []int{0, 1, 10, 1233, MaxRecords} {
		tok := c.encode("ecd-a", off)
		if got, ok := c.decode("ecd-a", tok); !ok || got != off {
			t.Fatalf("offset %d: decoded %d %v", off, got, ok)
		}
		if _, ok := c.decode("ecd-b", tok); ok {
			t.Fatalf("token of ecd-a accepted for ecd-b")
		}
		if _, ok := newTokenCodec(2).decode("ecd-a", tok); ok {
			t.Fatalf("token accepted under another seed")
		}
	}
}

func TestAppendUpdateTime(t *testing.T) {
	t.Parallel()
	for _, ms := range []int64{0, 1, 999, 1000, baseMillis, baseMillis + 37_123, 1709251199999, 1709251200000, 253402300799999} {
		want := time.UnixMilli(ms).UTC().Format(updateTimeLayout)
		if got := string(appendUpdateTime(nil, ms)); got != want {
			t.Errorf("%d: got %s, want %s", ms, got, want)
		}
	}
}
