package ecdsim

import (
	"strconv"
	"time"
)

// MaxRecords is the largest record count a [Desktop] may have. Records are
// generated on demand, so a large count costs no memory; the bound keeps
// every UpdateTime inside the years RFC 3339 can express.
const MaxRecords = 100_000_000

const (
	// baseMillis is 2022-01-01T00:00:00Z in Unix milliseconds, the
	// UpdateTime of record 0 before its millisecond jitter.
	baseMillis = 1640995200000
	// stepMillis separates consecutive records; the jitter added to each is
	// below 1000 ms, so UpdateTime strictly increases.
	stepMillis = 37_000
	// idChars is the length of the random part of desktop and image ids.
	idChars = 17
	// updateTimeLayout is RFC 3339 in UTC with exactly 3 fractional digits.
	updateTimeLayout = "2006-01-02T15:04:05.000Z"
)

const alnum = "abcdefghijklmnopqrstuvwxyz0123456789"

// Record is one entry of ImageModifiedRecords, with the upstream's JSON
// field names.
type Record struct {
	// Status is 0 while the change is in progress, 1 when it succeeded and
	// 2 when it failed.
	Status int `json:"Status"`
	// UpdateTime is RFC 3339 in UTC with millisecond precision, e.g.
	// "2022-03-03T02:43:44.851Z".
	UpdateTime string `json:"UpdateTime"`
	// ImageID is the image before the change.
	ImageID string `json:"ImageId"`
	// ImageName is the name of the image before the change.
	ImageName string `json:"ImageName"`
	// NewImageID is the image after the change.
	NewImageID string `json:"NewImageId"`
	// NewImageName is the name of the image after the change.
	NewImageName string `json:"NewImageName"`
	// Reason explains a failed change (Status 2); it is empty, and left out
	// of the JSON, otherwise.
	Reason string `json:"Reason,omitempty"`
}

// Desktop is a simulated cloud desktop.
type Desktop struct {
	// ID is the desktop id, e.g. "ecd-bd53sfmysz8ir0001".
	ID string
	// Records is how many image changes the desktop has, 0..MaxRecords.
	Records int
	// StuckToken injects the fault "NextToken never advances": every page
	// of the desktop answers with the NextToken it was asked with (the first
	// page with a token for the offset after it), never an empty one, so a
	// client that follows NextToken blindly loops forever.
	StuckToken bool
	// Live makes the desktop's image changes go on: new records start,
	// stay in progress, then succeed or fail as the simulator clock
	// advances, after the Records settled ones (see [Live]).
	Live bool
}

// imageNames are the image-name stems; a number is appended to each. Every
// stem has spaces and non-ASCII characters to exercise clients' encoding.
var imageNames = [...]string{
	"Windows Server 2019 镜像 #",
	"Ubuntu 22.04 开发环境 v",
	"Windows 10 企业版 办公桌面 build ",
	"CentOS 7.9 数据分析 (GPU) r",
	"Debian 12 «test» image ",
}

// failReasons are the Reasons of failed changes.
var failReasons = [...]string{
	"磁盘空间不足 / disk full",
	"镜像与桌面规格不兼容 / image incompatible with the desktop type",
	"操作超时，请稍后重试 / operation timed out",
	"快照配额不足 / snapshot quota exceeded",
}

// statusPerms are the orders of the statuses inside an aligned block of
// three records. Every block holds each status once, so any five (hence any
// ten) consecutive records show all of 0, 1 and 2.
var statusPerms = [6][3]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}}

const golden = 0x9E3779B97F4A7C15

// mix64 is the SplitMix64 finalizer, a bijection on uint64.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xBF58476D1CE4E5B9
	x ^= x >> 27
	x *= 0x94D049BB133111EB
	x ^= x >> 31
	return x
}

// splitmix is the SplitMix64 generator.
type splitmix struct{ s uint64 }

func (g *splitmix) next() uint64 {
	g.s += golden
	return mix64(g.s)
}

// alnum fills dst with letters and digits, 12 from each 64-bit draw
// (36^12 < 2^64).
func (g *splitmix) alnum(dst []byte) {
	var x uint64
	for i := range dst {
		if i%12 == 0 {
			x = g.next()
		}
		dst[i] = alnum[x%uint64(len(alnum))]
		x /= uint64(len(alnum))
	}
}

func seedHash(seed int64) uint64 { return mix64(uint64(seed) ^ 0x5851F42D4C957F2D) }

func fnv64a(s string) uint64 {
	h := uint64(0xCBF29CE484222325)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 0x100000001B3
	}
	return h
}

// desktopHash binds a desktop's records to the seed and the desktop id.
func desktopHash(seed int64, id string) uint64 { return mix64(fnv64a(id) ^ seedHash(seed)) }

// DefaultDesktops returns the eight sample desktops used when
// [Config.Desktops] is empty: record counts 1234, 250, 101, 100, 42, 7, 1
// and 0, with ids "ecd-" plus 17 lower-case letters and digits derived from
// seed, so the same seed always gives the same ids.
func DefaultDesktops(seed int64) []Desktop {
	counts := [...]int{1234, 250, 101, 100, 42, 7, 1, 0}
	g := splitmix{seedHash(seed) ^ 0xD1B54A32D192ED03}
	out := make([]Desktop, 0, len(counts))
	seen := make(map[string]bool, len(counts))
	var buf [4 + idChars]byte
	copy(buf[:], "ecd-")
	for _, n := range counts {
		var id string
		for {
			g.alnum(buf[4:])
			if id = string(buf[:]); !seen[id] {
				break
			}
		}
		seen[id] = true
		out = append(out, Desktop{ID: id, Records: n})
	}
	return out
}

// recordParts is a generated record before formatting; it holds no
// pointers so generating a page allocates nothing.
type recordParts struct {
	status          int
	millis          int64
	image, newImage [idChars]byte
	name, newName   int // index into imageNames
	nameN, newNameN int
	reason          int // index into failReasons, or -1
}

// genRecord derives record i of the desktop with hash dh. It is a pure
// function of (dh, i), that is of (seed, desktop id, i).
func genRecord(dh uint64, i int) recordParts {
	g := splitmix{mix64(dh + uint64(i)*golden)}
	var p recordParts
	block := mix64((dh ^ 0x2545F4914F6CDD1D) + uint64(i/3)*golden)
	p.status = statusPerms[block%6][i%3]
	p.millis = baseMillis + int64(i)*stepMillis + int64(g.next()%1000)
	g.alnum(p.image[:])
	g.alnum(p.newImage[:])
	if p.newImage == p.image {
		p.newImage[0] = alnum[(indexAlnum(p.newImage[0])+1)%len(alnum)]
	}
	p.name = int(g.next() % uint64(len(imageNames)))
	p.newName = int(g.next() % uint64(len(imageNames)))
	p.nameN = 1 + int(g.next()%999)
	p.newNameN = 1 + int(g.next()%999)
	p.reason = -1
	if p.status == 2 {
		p.reason = int(g.next() % uint64(len(failReasons)))
	}
	return p
}

func indexAlnum(c byte) int {
	if c >= 'a' && c <= 'z' {
		return int(c - 'a')
	}
	return 26 + int(c-'0')
}

func (p *recordParts) record() Record {
	r := Record{
		Status:       p.status,
		UpdateTime:   time.UnixMilli(p.millis).UTC().Format(updateTimeLayout),
		ImageID:      "m-" + string(p.image[:]),
		ImageName:    imageNames[p.name] + strconv.Itoa(p.nameN),
		NewImageID:   "m-" + string(p.newImage[:]),
		NewImageName: imageNames[p.newName] + strconv.Itoa(p.newNameN),
	}
	if p.reason >= 0 {
		r.Reason = failReasons[p.reason]
	}
	return r
}

// appendJSON appends the record as JSON, field for field what encoding/json
// would produce for [Record]. Every generated string is free of characters
// JSON must escape, so they are copied as they are.
func (p *recordParts) appendJSON(b []byte) []byte {
	b = append(b, `{"Status":`...)
	b = strconv.AppendInt(b, int64(p.status), 10)
	b = append(b, `,"UpdateTime":"`...)
	b = appendUpdateTime(b, p.millis)
	b = append(b, `","ImageId":"m-`...)
	b = append(b, p.image[:]...)
	b = append(b, `","ImageName":"`...)
	b = append(b, imageNames[p.name]...)
	b = strconv.AppendInt(b, int64(p.nameN), 10)
	b = append(b, `","NewImageId":"m-`...)
	b = append(b, p.newImage[:]...)
	b = append(b, `","NewImageName":"`...)
	b = append(b, imageNames[p.newName]...)
	b = strconv.AppendInt(b, int64(p.newNameN), 10)
	b = append(b, '"')
	if p.reason >= 0 {
		b = append(b, `,"Reason":"`...)
		b = append(b, failReasons[p.reason]...)
		b = append(b, '"')
	}
	return append(b, '}')
}

// appendUpdateTime appends Unix milliseconds ms in updateTimeLayout, the
// way time.Time.AppendFormat would, for years 0..9999, several times
// faster.
func appendUpdateTime(b []byte, ms int64) []byte {
	t := time.UnixMilli(ms).UTC()
	year, month, day := t.Date()
	hour, minute, sec := t.Clock()
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, 'T')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, minute, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	b = append(b, '.')
	b = appendDigits(b, int(ms%1000), 3)
	return append(b, 'Z')
}

// appendDigits appends the n lowest decimal digits of v, v >= 0.
func appendDigits(b []byte, v, n int) []byte {
	var buf [4]byte
	for i := n - 1; i >= 0; i-- {
		buf[i] = byte('0' + v%10)
		v /= 10
	}
	return append(b, buf[:n]...)
}
