// <metal_array>: metal::array, a fixed-size array with value semantics.
//
// Indexing past the end is undefined in Metal; here it stops the launch with an
// error naming the index and the size, as a sanitizer would.
#pragma once

namespace metal {

template <class T, size_t N>
struct array {
  T elems_[N > 0 ? N : 1];

  static constexpr size_t size() { return N; }
  static constexpr bool empty() { return N == 0; }
  constexpr T& operator[](size_t i) { return elems_[check(i)]; }
  constexpr const T& operator[](size_t i) const { return elems_[check(i)]; }
  constexpr T& front() { return elems_[0]; }
  constexpr const T& front() const { return elems_[0]; }
  constexpr T& back() { return elems_[N - 1]; }
  constexpr const T& back() const { return elems_[N - 1]; }
  constexpr T* data() { return elems_; }
  constexpr const T* data() const { return elems_; }
  constexpr T* begin() { return elems_; }
  constexpr const T* begin() const { return elems_; }
  constexpr T* end() { return elems_ + N; }
  constexpr const T* end() const { return elems_ + N; }

 private:
  static constexpr size_t check(size_t i) {
    if (!__builtin_is_constant_evaluated() && i >= N)
      mpsk_rt::trap("metal::array index %lu out of range for an array of %lu elements", (unsigned long)i,
                    (unsigned long)N);
    return i;
  }
};

}  // namespace metal
