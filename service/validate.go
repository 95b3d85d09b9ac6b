package service

import (
	"errors"
	"math"
	"regexp"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/imagerecords/imagerecords/upstream"
)

// desktopPattern matches ECD desktop ids such as ecd-bd53sfmysz8ir0001.
var desktopPattern = regexp.MustCompile(`^ecd-[0-9a-z]{1,60}$`)

// violations collects what is wrong with a request before any upstream
// call, so the caller learns about every bad field at once.
type violations []*errdetails.BadRequest_FieldViolation

func (v *violations) add(field, description string) {
	*v = append(*v, &errdetails.BadRequest_FieldViolation{Field: field, Description: description})
}

func (v *violations) checkDesktop(region, desktop string) {
	v.checkRegion(region)
	switch {
	case desktop == "":
		v.add("desktop_id", "required, e.g. ecd-bd53sfmysz8ir0001")
	case !desktopPattern.MatchString(desktop):
		v.add("desktop_id", `must be an ECD desktop id: "ecd-" and up to 60 lower-case letters or digits`)
	}
}

func (v *violations) checkRegion(region string) {
	switch {
	case region == "":
		v.add("region_id", "required, e.g. cn-hangzhou")
	case !upstream.ValidRegion(region):
		v.add("region_id", "must be an Alibaba Cloud region id such as cn-hangzhou")
	}
}

// checkToken opens token with keys unless region or desktop are already known bad
// (a token is bound to them, so it cannot be judged without them). Other
// bad fields do not stop it: the caller learns about every bad field at
// once.
func (v *violations) checkToken(keys *TokenKeys, region, desktop, token string) upstream.Cursor {
	for _, fv := range *v {
		if f := fv.GetField(); f == "region_id" || f == "desktop_id" {
			return upstream.Cursor{}
		}
	}
	p, err := keys.openCursor(region, desktop, token)
	if err != nil {
		v.add("page_token", err.Error())
	}
	return p
}

func (v violations) err() error {
	if len(v) == 0 {
		return nil
	}
	msg := v[0].Field + ": " + v[0].Description
	if len(v) > 1 {
		msg += " (and more field violations in the details)"
	}
	cerr := connect.NewError(connect.CodeInvalidArgument, errors.New(msg))
	if d, err := connect.NewErrorDetail(&errdetails.BadRequest{FieldViolations: v}); err == nil {
		cerr.AddDetail(d)
	}
	return cerr
}

// checkMaxRecords returns max_records as a record limit (0: none).
func checkMaxRecords(v *violations, n int64) int {
	if n < 0 {
		v.add("max_records", "must not be negative (0 streams every record)")
		return 0
	}
	return int(min(n, math.MaxInt32))
}

func checkPageSize(v *violations, size int32) int {
	if size < 0 || size > upstream.MaxPageSize {
		v.add("page_size", "must be between 0 and 100 (0 means 10)")
		return 0
	}
	if size == 0 {
		return upstream.DefaultPageSize
	}
	return int(size)
}
