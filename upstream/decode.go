package upstream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

type pageJSON struct {
	RequestID            string       `json:"RequestId"`
	TotalCount           int          `json:"TotalCount"`
	NextToken            string       `json:"NextToken"`
	ImageModifiedRecords []recordJSON `json:"ImageModifiedRecords"`
}

type recordJSON struct {
	Status       int    `json:"Status"`
	UpdateTime   string `json:"UpdateTime"`
	ImageID      string `json:"ImageId"`
	ImageName    string `json:"ImageName"`
	NewImageID   string `json:"NewImageId"`
	NewImageName string `json:"NewImageName"`
	Reason       string `json:"Reason"`
}

// DecodePage parses a successful DescribeImageModifiedRecords body.
func DecodePage(body []byte) (*Page, error) { return decodePage(body) }

func decodePage(body []byte) (*Page, error) {
	var pj pageJSON
	if err := json.Unmarshal(body, &pj); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedResponse, err)
	}
	p := &Page{
		RequestID:  pj.RequestID,
		TotalCount: pj.TotalCount,
		NextToken:  pj.NextToken,
		Records:    make([]Record, len(pj.ImageModifiedRecords)),
	}
	for i, r := range pj.ImageModifiedRecords {
		var t time.Time
		if r.UpdateTime != "" {
			var err error
			if t, err = time.Parse(time.RFC3339Nano, r.UpdateTime); err != nil {
				return nil, fmt.Errorf("%w: record %d: UpdateTime %q is not RFC 3339", ErrMalformedResponse, i, r.UpdateTime)
			}
		}
		p.Records[i] = Record{
			Status:       r.Status,
			UpdateTime:   t,
			ImageID:      r.ImageID,
			ImageName:    r.ImageName,
			NewImageID:   r.NewImageID,
			NewImageName: r.NewImageName,
			Reason:       r.Reason,
		}
	}
	return p, nil
}

type errorJSON struct {
	RequestID string `json:"RequestId"`
	HostID    string `json:"HostId"`
	Code      string `json:"Code"`
	Message   string `json:"Message"`
	Recommend string `json:"Recommend"`
}

func parseAPIError(resp *http.Response, body []byte) *APIError {
	e := &APIError{HTTPStatus: resp.StatusCode}
	var ej errorJSON
	if json.Unmarshal(body, &ej) == nil {
		e.Code, e.Message, e.RequestID, e.HostID, e.Recommend = ej.Code, ej.Message, ej.RequestID, ej.HostID, ej.Recommend
	} else {
		e.Message = strings.TrimSpace(string(truncate(body, 200)))
	}
	for _, h := range []string{"x-ratelimit-user-api", "x-ratelimit-user"} {
		if v := resp.Header.Get(h); v != "" {
			e.RetryAfter = v
			break
		}
	}
	return e
}

func truncate(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	return append(bytes.Clone(b[:n]), "…"...)
}
