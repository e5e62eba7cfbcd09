package visionrpc_test

// Shared-memory regions against the harness's real server (started with --shared-memory): real regions in
// /dev/shm, the real detector, the holding call kept and renewed by the client's goroutine.

import (
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
	"github.com/visionrpc/visionrpc/clients/go/visionrpc"
)

const rgbOrder = visionrpcv1.ChannelOrder_CHANNEL_ORDER_RGB

// photoRGB decodes one of the harness's photos into RGB bytes.
func photoRGB(t *testing.T, name string) (pixels []byte, width, height uint32) {
	t.Helper()
	media := os.Getenv("VISIONRPC_CONFORMANCE_MEDIA")
	if media == "" {
		t.Fatal("VISIONRPC_CONFORMANCE_MEDIA is not set (the harness sets it to a folder of the cases' photos)")
	}
	f, err := os.Open(filepath.Join(media, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	return rgbBytes(img)
}

func rgbBytes(img image.Image) (pixels []byte, width, height uint32) {
	b := img.Bounds()
	pixels = make([]byte, 0, b.Dx()*b.Dy()*3)
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			pixels = append(pixels, byte(r>>8), byte(g>>8), byte(bl>>8))
		}
	}
	return pixels, uint32(b.Dx()), uint32(b.Dy())
}

// sameDetections: same classes in order, boxes within 0.01 px, confidences within 1e-4.
func sameDetections(a, b *visionrpcv1.InferResponse) error {
	for i, pa := range a.GetPredictions() {
		da, db := pa.GetDetections(), b.GetPredictions()[i].GetDetections()
		if len(da) != len(db) {
			return fmt.Errorf("image %d: %d detections, want %d", i, len(da), len(db))
		}
		for j := range da {
			x, y := da[j], db[j]
			boxA := []float32{x.GetBox().GetXMin(), x.GetBox().GetYMin(), x.GetBox().GetXMax(), x.GetBox().GetYMax()}
			boxB := []float32{y.GetBox().GetXMin(), y.GetBox().GetYMin(), y.GetBox().GetXMax(), y.GetBox().GetYMax()}
			for k := range boxA {
				if math.Abs(float64(boxA[k]-boxB[k])) > 0.01 {
					return fmt.Errorf("image %d detection %d: box %v, want %v", i, j, boxA, boxB)
				}
			}
			if x.GetClassName() != y.GetClassName() || math.Abs(float64(x.GetConfidence()-y.GetConfidence())) > 1e-4 {
				return fmt.Errorf("image %d detection %d: %s %.4f, want %s %.4f", i, j,
					x.GetClassName(), x.GetConfidence(), y.GetClassName(), y.GetConfidence())
			}
		}
	}
	return nil
}

func createRegion(ctx context.Context, t *testing.T, client *visionrpc.Client, size int) *visionrpc.SharedMemoryRegion {
	t.Helper()
	region, err := client.CreateSharedMemory(ctx, size)
	if err != nil {
		t.Fatalf("CreateSharedMemory: %v", err)
	}
	t.Cleanup(func() { _ = region.Close() })
	return region
}

func listed(ctx context.Context, t *testing.T, client *visionrpc.Client, name string) bool {
	t.Helper()
	regions, err := client.ListSharedMemory(ctx)
	if err != nil {
		t.Fatalf("ListSharedMemory: %v", err)
	}
	for _, r := range regions {
		if r.GetName() == name {
			return true
		}
	}
	return false
}

func waitUntil(t *testing.T, what string, condition func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !condition() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSharedMemoryImageInfersLikeItsPixels(t *testing.T) {
	client := dialServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	defer cancel()
	pixels, w, h := photoRGB(t, "coffee.png")
	region := createRegion(ctx, t, client, len(pixels)+7)
	im, err := region.Write(pixels, 7, w, h, rgbOrder) // an unaligned offset on purpose
	if err != nil {
		t.Fatal(err)
	}
	fromShm, err := client.Infer(ctx, []visionrpc.Image{im})
	if err != nil {
		t.Fatalf("Infer (shared memory): %v", err)
	}
	fromPixels, err := client.Infer(ctx, []visionrpc.Image{visionrpc.ImageFromPixels(pixels, w, h, rgbOrder)})
	if err != nil {
		t.Fatalf("Infer (pixels): %v", err)
	}
	if err := sameDetections(fromShm, fromPixels); err != nil {
		t.Fatal(err)
	}
	if len(fromShm.GetPredictions()[0].GetDetections()) == 0 {
		t.Fatal("no detections on coffee.png")
	}
}

func TestSharedMemoryCloseUnregistersAndRemoves(t *testing.T) {
	client := dialServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	region, err := client.CreateSharedMemory(ctx, 4096)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("/dev/shm", region.Name[1:])
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("region file %s: %v %v, want mode 0600", path, info, err)
	}
	if !region.Registered() || !listed(ctx, t, client, region.Name) {
		t.Fatal("region not registered after CreateSharedMemory")
	}
	if err := region.Close(); err != nil {
		t.Fatal(err)
	}
	if listed(ctx, t, client, region.Name) {
		t.Error("region still listed after Close")
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("region file %s still there after Close: %v", path, err)
	}
	if err := region.Close(); err != nil { // idempotent
		t.Error(err)
	}
	if _, err := region.Write(make([]byte, 3), 0, 1, 1, rgbOrder); err == nil {
		t.Error("Write after Close succeeded")
	}
}

func TestSharedMemoryRegionClosesCleanlyAfterItsClient(t *testing.T) {
	client := dial(t, serverAddress(t, "VISIONRPC_ADDRESS"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	region, err := client.CreateSharedMemory(ctx, 4096)
	if err != nil {
		t.Fatal(err)
	}
	_ = client.Close() // the holding call breaks; the goroutine finds the connection shut down and stops
	done := make(chan error, 1)
	go func() { done <- region.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("Close did not return")
	}
	if _, err := os.Stat(filepath.Join("/dev/shm", region.Name[1:])); !os.IsNotExist(err) {
		t.Errorf("region file still there: %v", err)
	}
}

func TestSharedMemoryRegionIsRegisteredAgainWhenTheServerDropsIt(t *testing.T) {
	client := dialServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	region := createRegion(ctx, t, client, 4096)
	// Another client unregisters it: the holding call ends, and the goroutine registers the region again.
	other := dialServer(t)
	_, err := visionrpcv1.NewSharedMemoryServiceClient(other.Conn()).UnregisterSharedMemory(
		ctx, &visionrpcv1.UnregisterSharedMemoryRequest{Name: region.Name})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "registered again", func() bool { return region.Registered() && listed(ctx, t, client, region.Name) })
}

func TestSharedMemoryManyGoroutinesInferFromTheirOwnSlots(t *testing.T) {
	client := dialServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	defer cancel()
	pixels, w, h := photoRGB(t, "coffee.png")
	want, err := client.Infer(ctx, []visionrpc.Image{visionrpc.ImageFromPixels(pixels, w, h, rgbOrder)})
	if err != nil {
		t.Fatal(err)
	}
	const slots = 16
	region := createRegion(ctx, t, client, slots*len(pixels))
	var wg sync.WaitGroup
	errs := make(chan error, slots)
	for i := range slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			im, err := region.Write(pixels, uint64(i*len(pixels)), w, h, rgbOrder)
			if err == nil {
				var got *visionrpcv1.InferResponse
				if got, err = client.Infer(ctx, []visionrpc.Image{im}); err == nil {
					err = sameDetections(got, want)
				}
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestSharedMemoryMisuseIsRefusedBeforeAnyCall(t *testing.T) {
	client := dialServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	region := createRegion(ctx, t, client, 4096)
	cases := map[string]func() error{
		"past-the-end": func() error { _, err := region.Write(make([]byte, 48), 4090, 4, 4, rgbOrder); return err },
		"too-big":      func() error { _, err := region.Image(0, 64, 64, rgbOrder); return err },
		"no-order": func() error {
			_, err := region.Image(0, 4, 4, visionrpcv1.ChannelOrder_CHANNEL_ORDER_UNSPECIFIED)
			return err
		},
		"zero-width":   func() error { _, err := region.Image(0, 0, 4, rgbOrder); return err },
		"wrong-length": func() error { _, err := region.Write(make([]byte, 47), 0, 4, 4, rgbOrder); return err },
		"offset-wraps": func() error { _, err := region.Image(math.MaxUint64-1, 4, 4, rgbOrder); return err },
		"zero-size":    func() error { _, err := client.CreateSharedMemory(ctx, 0); return err },
	}
	for name, call := range cases {
		t.Run(name, func(t *testing.T) {
			if err := call(); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

func TestSharedMemoryRefusedRegionLeavesNothingBehind(t *testing.T) {
	client := dialServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := client.CreateSharedMemory(ctx, 4096, visionrpc.WithSharedMemoryPrefix("/elsewhere-"))
	var rpcErr *visionrpc.Error
	if !errors.As(err, &rpcErr) || rpcErr.Code != codes.PermissionDenied || rpcErr.Reason != "SHARED_MEMORY_NAME_NOT_ALLOWED" {
		t.Fatalf("got %v, want PermissionDenied SHARED_MEMORY_NAME_NOT_ALLOWED", err)
	}
	left, _ := filepath.Glob(fmt.Sprintf("/dev/shm/elsewhere-%d-*", os.Getpid()))
	if len(left) > 0 {
		t.Errorf("regions left in /dev/shm: %v", left)
	}
}
