package visionrpc

import (
	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
)

// MaskRows decodes a segmentation mask (Detection.GetMask()) into Height rows of Width booleans, true where
// the object is. Row r, column c is image pixel (Left + c, Top + r). The counts alternate background and
// object runs in row-major order, starting with background; a nil mask gives nil. Runs that overrun the grid
// are cut at its end.
func MaskRows(mask *visionrpcv1.Mask) [][]bool {
	if mask == nil {
		return nil
	}
	width, height := int(mask.GetWidth()), int(mask.GetHeight())
	flat := make([]bool, width*height)
	position := 0
	for index, run := range mask.GetCounts() {
		end := min(position+int(run), len(flat))
		if index%2 == 1 {
			for i := position; i < end; i++ {
				flat[i] = true
			}
		}
		position = end
	}
	rows := make([][]bool, height)
	for r := range rows {
		rows[r] = flat[r*width : (r+1)*width]
	}
	return rows
}

// MaskArea is the number of object pixels of a segmentation mask (0 for nil).
func MaskArea(mask *visionrpcv1.Mask) int {
	area := 0
	for index, run := range mask.GetCounts() {
		if index%2 == 1 {
			area += int(run)
		}
	}
	return area
}
