package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/acs"
)

// directClient is the reference "caller who skips the gateway": plain
// net/http and encoding/json, signing every request with signature V3
// (package acs, checked against the official SDK's signing code), and
// nothing of package upstream but its constants.
type directClient struct {
	http     *http.Client
	endpoint string // http://host:port
	host     string
	keyID    string
	secret   string
}

// directPage is the upstream JSON, decoded the way a Go caller would.
type directPage struct {
	RequestID  string         `json:"RequestId"`
	TotalCount int            `json:"TotalCount"`
	NextToken  string         `json:"NextToken"`
	Records    []directRecord `json:"ImageModifiedRecords"`
}

type directRecord struct {
	Status       int       `json:"Status"`
	UpdateTime   time.Time `json:"UpdateTime"`
	ImageID      string    `json:"ImageId"`
	ImageName    string    `json:"ImageName"`
	NewImageID   string    `json:"NewImageId"`
	NewImageName string    `json:"NewImageName"`
	Reason       string    `json:"Reason"`
}

func newDirectClient(endpoint, keyID, secret string) *directClient {
	// A keep-alive pool as large as the gateway's upstream pool
	// (upstream.NewTransport), so that concurrent callers reuse connections.
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 1024
	t.MaxIdleConnsPerHost = 1024
	return &directClient{
		http:     &http.Client{Transport: t},
		endpoint: endpoint,
		host:     strings.TrimPrefix(endpoint, "http://"),
		keyID:    keyID,
		secret:   secret,
	}
}

// describe makes one signed DescribeImageModifiedRecords call; maxResults 0
// leaves the page size to the upstream (10, as the official SDK does).
func (d *directClient) describe(ctx context.Context, desktop, token string, maxResults int) (*directPage, error) {
	params := url.Values{"RegionId": {region}, "DesktopId": {desktop}}
	if maxResults > 0 {
		params.Set("MaxResults", strconv.Itoa(maxResults))
	}
	if token != "" {
		params.Set("NextToken", token)
	}
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	call := acs.Call{
		Action: upstream.Action, Version: upstream.APIVersion, Params: params,
		Timestamp: time.Now(), Nonce: hex.EncodeToString(nonce[:]),
	}
	query, header := call.SignV3(d.host, acs.Credentials{AccessKeyID: d.keyID, AccessKeySecret: d.secret})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.endpoint+"/?"+query, http.NoBody)
	if err != nil {
		return nil, err
	}
	req.Header = header
	req.Header.Set("Accept", "application/json")
	resp, err := d.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("upstream HTTP %d: %s", resp.StatusCode, body)
	}
	var page directPage
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		return nil, fmt.Errorf("decoding the upstream answer: %w", err)
	}
	return &page, nil
}

// stream pages through a whole desktop with NextToken, maxResults records
// at a time, calling onPage after every page.
func (d *directClient) stream(ctx context.Context, desktop string, maxResults int, onPage func(*directPage)) (records int, err error) {
	token := ""
	for {
		page, err := d.describe(ctx, desktop, token, maxResults)
		if err != nil {
			return records, err
		}
		records += len(page.Records)
		if onPage != nil {
			onPage(page)
		}
		if page.NextToken == "" {
			return records, nil
		}
		token = page.NextToken
	}
}
