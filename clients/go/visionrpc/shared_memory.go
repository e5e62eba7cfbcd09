package visionrpc

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
)

// DefaultSharedMemoryPrefix is the servers' default prefix of shared-memory region names.
const DefaultSharedMemoryPrefix = "/visionrpc-"

const (
	shmBackoffMin = 50 * time.Millisecond
	shmBackoffMax = 2 * time.Second
)

// ImageFromSharedMemory refers to pixels in a shared-memory region registered with the server: width * height
// * channels(order) bytes at offset, laid out as ImageFromPixels' (rows top to bottom, channels interleaved,
// no row padding). SharedMemoryRegion.Write and SharedMemoryRegion.Image make them for a region of this
// process; this constructor is for regions registered by other means.
func ImageFromSharedMemory(region string, offset uint64, width, height uint32, order visionrpcv1.ChannelOrder) Image {
	return Image{kind: imageSharedMemory, shm: &visionrpcv1.SharedMemoryImage{
		Region: region, Offset: offset, Width: width, Height: height, ChannelOrder: order,
	}}
}

// SharedMemoryOption changes how CreateSharedMemory makes a region.
type SharedMemoryOption func(*sharedMemoryConfig)

type sharedMemoryConfig struct{ prefix string }

// WithSharedMemoryPrefix names the region under prefix instead of DefaultSharedMemoryPrefix; it must be the
// server's --shared-memory-prefix.
func WithSharedMemoryPrefix(prefix string) SharedMemoryOption {
	return func(c *sharedMemoryConfig) { c.prefix = prefix }
}

// SharedMemoryRegion is a POSIX shared-memory region (a file in /dev/shm, mode 0600) that this process created
// and keeps registered with one server, which must run on this host, as this user, with --shared-memory.
// Write images into it and pass the returned Images to Infer: the pixels never travel through the
// connection. A goroutine holds the server's RegisterSharedMemory call open and registers the region again
// when that call ends or breaks (a server restart, a recycled connection). Do not rewrite an image's bytes
// while a request naming them is in flight: the server reads them in place. Close it when done.
type SharedMemoryRegion struct {
	// Name is the region's POSIX name, "<prefix><pid>-<random>".
	Name string
	// Size is its size in bytes.
	Size int

	memory     []byte
	path       string
	conn       *grpc.ClientConn
	service    visionrpcv1.SharedMemoryServiceClient
	cancel     context.CancelFunc
	done       chan struct{}
	registered atomic.Bool
	closeOnce  sync.Once
	closeErr   error
}

// CreateSharedMemory creates a region of size bytes and registers it; ctx bounds the registration only.
//
// Errors: the server's refusal as an *Error (codes.PermissionDenied when it has shared memory off or another
// prefix, codes.InvalidArgument when it cannot use the region: another user, another /dev/shm, over its size
// limit); creating the region fails on a full /dev/shm or where there is none (not Linux). A failed
// registration removes the region again.
func (c *Client) CreateSharedMemory(ctx context.Context, size int, opts ...SharedMemoryOption) (*SharedMemoryRegion, error) {
	cfg := sharedMemoryConfig{prefix: DefaultSharedMemoryPrefix}
	for _, opt := range opts {
		opt(&cfg)
	}
	if size < 1 {
		return nil, fmt.Errorf("visionrpc: expected a region size >= 1, got %d", size)
	}
	name, path, memory, err := createRegion(cfg.prefix, size)
	if err != nil {
		return nil, fmt.Errorf("visionrpc: create shared memory: %w", err)
	}
	holdCtx, cancel := context.WithCancel(context.Background())
	r := &SharedMemoryRegion{
		Name: name, Size: size, memory: memory, path: path, conn: c.conn,
		service: visionrpcv1.NewSharedMemoryServiceClient(c.conn), cancel: cancel, done: make(chan struct{}),
	}
	first := make(chan error, 1)
	go r.hold(holdCtx, first)
	select {
	case err = <-first:
	case <-ctx.Done():
		err = fromError(ctx, ctx.Err())
	}
	if err != nil {
		_ = r.Close()
		return nil, err
	}
	return r, nil
}

// hold keeps the registering call open, and opens it again when it ends or breaks, until Close.
func (r *SharedMemoryRegion) hold(ctx context.Context, first chan<- error) {
	defer close(r.done)
	req := &visionrpcv1.RegisterSharedMemoryRequest{
		Region: &visionrpcv1.SharedMemoryRegion{Name: r.Name, ByteSize: uint64(r.Size)},
	}
	backoff := shmBackoffMin
	everRegistered := false
	for {
		stream, err := r.service.RegisterSharedMemory(ctx, req)
		if err == nil {
			_, err = stream.Recv() // the one answer: registered
			if err == nil {
				r.registered.Store(true)
				if !everRegistered {
					everRegistered = true
					first <- nil
				}
				backoff = shmBackoffMin
				_, err = stream.Recv() // blocks until the registration ends (io.EOF: unregistered)
			}
		}
		r.registered.Store(false)
		if ctx.Err() != nil {
			return
		}
		if !everRegistered {
			first <- fromError(ctx, err)
			return
		}
		if r.conn.GetState() == connectivity.Shutdown { // the client was closed: nothing to register with
			return
		}
		// Ended (io.EOF: unregistered by someone, or the server stopped) or broke: register again.
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, shmBackoffMax)
	}
}

// Registered reports whether the server holds the region now (false while it is being registered again).
func (r *SharedMemoryRegion) Registered() bool { return r.registered.Load() }

// Bytes is the region's memory, writable, for decoding or drawing into it directly; do not use it after Close.
func (r *SharedMemoryRegion) Bytes() []byte { return r.memory }

// Image refers to width x height pixels in order at offset of this region (already written there).
func (r *SharedMemoryRegion) Image(offset uint64, width, height uint32, order visionrpcv1.ChannelOrder) (Image, error) {
	channels := channelCount(order)
	if channels == 0 || width == 0 || height == 0 {
		return Image{}, fmt.Errorf("visionrpc: expected a channel order and a positive width and height, got %v %dx%d", order, width, height)
	}
	end := offset + uint64(width)*uint64(height)*uint64(channels)
	if r.memory == nil {
		return Image{}, fmt.Errorf("visionrpc: shared-memory region %s is closed", r.Name)
	}
	if end > uint64(len(r.memory)) || end < offset {
		return Image{}, fmt.Errorf("visionrpc: expected the image's %d bytes at offset %d to fit the region's %d", end-offset, offset, len(r.memory))
	}
	return ImageFromSharedMemory(r.Name, offset, width, height, order), nil
}

// Write copies pixels (laid out as for ImageFromPixels) into the region at offset and returns their Image.
func (r *SharedMemoryRegion) Write(pixels []byte, offset uint64, width, height uint32, order visionrpcv1.ChannelOrder) (Image, error) {
	im, err := r.Image(offset, width, height, order)
	if err != nil {
		return Image{}, err
	}
	if want := uint64(width) * uint64(height) * uint64(channelCount(order)); uint64(len(pixels)) != want {
		return Image{}, fmt.Errorf("visionrpc: expected %d bytes of pixels (%dx%d %v), got %d", want, width, height, order, len(pixels))
	}
	copy(r.memory[offset:], pixels)
	return im, nil
}

// Close unregisters the region, unlinks it and unmaps it. It is idempotent.
func (r *SharedMemoryRegion) Close() error {
	r.closeOnce.Do(func() {
		if r.registered.Load() { // at once, rather than when the server notices the cancelled call
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, _ = r.service.UnregisterSharedMemory(ctx, &visionrpcv1.UnregisterSharedMemoryRequest{Name: r.Name})
			cancel()
		}
		r.cancel()
		<-r.done
		r.closeErr = removeRegion(r.path, r.memory)
		r.memory = nil
	})
	return r.closeErr
}

// ListSharedMemory returns the regions the server holds now, of every client.
func (c *Client) ListSharedMemory(ctx context.Context) ([]*visionrpcv1.SharedMemoryRegion, error) {
	service := visionrpcv1.NewSharedMemoryServiceClient(c.conn)
	resp, err := unary(ctx, c, service.ListSharedMemory, &visionrpcv1.ListSharedMemoryRequest{})
	return resp.GetRegions(), err
}

func channelCount(order visionrpcv1.ChannelOrder) int {
	switch order {
	case visionrpcv1.ChannelOrder_CHANNEL_ORDER_GRAY:
		return 1
	case visionrpcv1.ChannelOrder_CHANNEL_ORDER_RGB, visionrpcv1.ChannelOrder_CHANNEL_ORDER_BGR:
		return 3
	case visionrpcv1.ChannelOrder_CHANNEL_ORDER_RGBA, visionrpcv1.ChannelOrder_CHANNEL_ORDER_BGRA:
		return 4
	}
	return 0
}
