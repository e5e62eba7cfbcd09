package visionrpc_test

import (
	"reflect"
	"testing"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
	"github.com/visionrpc/visionrpc/clients/go/visionrpc"
)

func TestMaskRows(t *testing.T) {
	cases := []struct {
		name string
		mask *visionrpcv1.Mask
		rows [][]bool
		area int
	}{
		{"nil", nil, nil, 0},
		{"starts with object", &visionrpcv1.Mask{Width: 3, Height: 2, Counts: []uint32{0, 1, 3, 2}},
			[][]bool{{true, false, false}, {false, true, true}}, 3},
		{"starts with background", &visionrpcv1.Mask{Width: 3, Height: 2, Counts: []uint32{2, 3, 1}},
			[][]bool{{false, false, true}, {true, true, false}}, 3},
		{"empty", &visionrpcv1.Mask{Width: 2, Height: 1, Counts: []uint32{2}}, [][]bool{{false, false}}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := visionrpc.MaskRows(c.mask); !reflect.DeepEqual(got, c.rows) {
				t.Errorf("MaskRows = %v, want %v", got, c.rows)
			}
			if got := visionrpc.MaskArea(c.mask); got != c.area {
				t.Errorf("MaskArea = %d, want %d", got, c.area)
			}
		})
	}
}
