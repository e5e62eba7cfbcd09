//go:build !linux

package visionrpc

import "errors"

// Shared-memory inputs need the server's host to be Linux (/dev/shm); the client must run there too.
func createRegion(prefix string, size int) (name, path string, memory []byte, err error) {
	return "", "", nil, errors.New("shared-memory regions need Linux (/dev/shm)")
}

func removeRegion(path string, memory []byte) error { return nil }
