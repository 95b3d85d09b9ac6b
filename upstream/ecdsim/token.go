package ecdsim

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"hash"
	"sync"
)

// A NextToken is standard base64, with padding, of
//
//	0xFB 0xFF 0xBF | offset (uint32, big endian) | MAC (12 bytes)
//
// where MAC is HMAC-SHA256, keyed from the seed, of the desktop id, a zero
// byte and the offset. The prefix encodes as "+/+/" and the 19-byte length
// leaves "==" padding, so every token holds '+', '/' and '=' and catches a
// client that does not percent-encode it.
const (
	tokenMACLen = 12
	tokenLen    = 3 + 4 + tokenMACLen
)

var tokenPrefix = [3]byte{0xFB, 0xFF, 0xBF}

// tokenCodec issues and checks NextTokens. It is safe for concurrent use.
type tokenCodec struct {
	macs sync.Pool // of hash.Hash (HMAC-SHA256 with the token key)
}

func newTokenCodec(seed int64) *tokenCodec {
	var msg [8]byte
	binary.BigEndian.PutUint64(msg[:], uint64(seed))
	kh := sha256.New()
	kh.Write([]byte("ecdsim NextToken key\x00"))
	kh.Write(msg[:])
	key := kh.Sum(nil)
	return &tokenCodec{macs: sync.Pool{New: func() any { return hmac.New(sha256.New, key) }}}
}

func (c *tokenCodec) mac(dst []byte, desktopID string, off uint32) {
	h := c.macs.Get().(hash.Hash)
	h.Reset()
	var msg [64]byte
	b := append(msg[:0], desktopID...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint32(b, off)
	h.Write(b)
	var sum [sha256.Size]byte
	copy(dst, h.Sum(sum[:0]))
	c.macs.Put(h)
}

// encode returns the token that resumes desktopID's records at off.
func (c *tokenCodec) encode(desktopID string, off int) string {
	var raw [tokenLen]byte
	copy(raw[:], tokenPrefix[:])
	binary.BigEndian.PutUint32(raw[3:], uint32(off))
	c.mac(raw[7:], desktopID, uint32(off))
	return base64.StdEncoding.EncodeToString(raw[:])
}

// decode returns the offset of a token issued for desktopID, or false when
// the simulator did not issue tok for that desktop.
func (c *tokenCodec) decode(desktopID, tok string) (int, bool) {
	if len(tok) != base64.StdEncoding.EncodedLen(tokenLen) {
		return 0, false
	}
	var raw [tokenLen + 2]byte
	n, err := base64.StdEncoding.Decode(raw[:], []byte(tok))
	if err != nil || n != tokenLen || [3]byte(raw[:3]) != tokenPrefix {
		return 0, false
	}
	off := binary.BigEndian.Uint32(raw[3:])
	var want [tokenMACLen]byte
	c.mac(want[:], desktopID, off)
	if !hmac.Equal(want[:], raw[7:tokenLen]) {
		return 0, false
	}
	return int(off), true
}
