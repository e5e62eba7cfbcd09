package visionrpc

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// shmDir is where glibc's shm_open keeps POSIX shared memory on Linux, and where the server looks.
const shmDir = "/dev/shm"

// createRegion creates "<prefix><pid>-<random>" in /dev/shm (0600, never an existing file), reserves its pages
// (a full /dev/shm fails here rather than with SIGBUS at the first write) and maps it read-write.
func createRegion(prefix string, size int) (name, path string, memory []byte, err error) {
	random := make([]byte, 6)
	if _, err := rand.Read(random); err != nil {
		return "", "", nil, err
	}
	name = fmt.Sprintf("%s%d-%s", prefix, os.Getpid(), hex.EncodeToString(random))
	path = filepath.Join(shmDir, strings.TrimPrefix(name, "/"))
	fd, err := syscall.Open(path, syscall.O_CREAT|syscall.O_EXCL|syscall.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return "", "", nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	if err := syscall.Fallocate(fd, 0, 0, int64(size)); err != nil {
		_ = os.Remove(path)
		return "", "", nil, &os.PathError{Op: "fallocate", Path: path, Err: err}
	}
	memory, err = syscall.Mmap(fd, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		_ = os.Remove(path)
		return "", "", nil, &os.PathError{Op: "mmap", Path: path, Err: err}
	}
	return name, path, memory, nil
}

func removeRegion(path string, memory []byte) error {
	err := os.Remove(path)
	if os.IsNotExist(err) {
		err = nil
	}
	if memory != nil {
		if unmapErr := syscall.Munmap(memory); err == nil {
			err = unmapErr
		}
	}
	return err
}
