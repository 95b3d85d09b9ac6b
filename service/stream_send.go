package service

import (
	"context"
	"fmt"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
)

// messageSender writes a stream's messages one at a time, each on a
// goroutine that lives as long as its write, so that the handler's own
// goroutine fetches the next page meanwhile. A stream holds a second
// goroutine only while a message is being written, rather than for its
// whole life: at fan-in (1,000 streams whose callers read at once) that
// is a goroutine stack less per stream.
type messageSender struct {
	stream   *connect.ServerStream[imagerecordsv1.StreamImageModifiedRecordsResponse]
	done     chan error // buffered: the outcome of the write in flight
	inFlight bool
}

func newMessageSender(stream *connect.ServerStream[imagerecordsv1.StreamImageModifiedRecordsResponse]) *messageSender {
	return &messageSender{stream: stream, done: make(chan error, 1)}
}

// start begins writing out; then, when the write has ended, written runs
// with its outcome on the writing goroutine (written must not touch the
// stream). The previous write must have been waited for.
func (m *messageSender) start(out *imagerecordsv1.StreamImageModifiedRecordsResponse, written func(error)) {
	m.inFlight = true
	go func() {
		var err error
		defer func() {
			if r := recover(); r != nil { // as connect's recovery would in the handler
				err = connect.NewError(connect.CodeInternal, fmt.Errorf("sending a message panicked: %v", r))
			}
			written(err)
			m.done <- err
		}()
		err = m.stream.Send(out)
	}()
}

// wait returns the outcome of the write in flight once it has ended; nil
// when no write is in flight.
func (m *messageSender) wait() error {
	if !m.inFlight {
		return nil
	}
	m.inFlight = false
	return <-m.done
}

// sendFailed is the stream's error when Send failed with err: the
// caller's cancellation or deadline when that is why.
func (s *Service) sendFailed(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return s.toConnectError(ctx, ctx.Err())
	}
	return err
}
