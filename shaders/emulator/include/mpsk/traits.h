// <metal_type_traits>: Metal's type traits, on clang's builtins.
//
// Metal's traits see through address spaces where the MSL specification says so
// (remove_addrspace_t) and count its vector types as vectors, not scalars:
// is_scalar_v<float4> is false and is_floating_point_v<float4> is false, as in
// Metal, while is_floating_point_v<half> and <bfloat> are true.
#pragma once

namespace metal {

template <class T, T v>
struct integral_constant {
  static constexpr T value = v;
  using value_type = T;
  using type = integral_constant;
  constexpr operator T() const { return v; }
  constexpr T operator()() const { return v; }
};
template <bool B>
using bool_constant = integral_constant<bool, B>;
using true_type = bool_constant<true>;
using false_type = bool_constant<false>;

template <bool B, class T = void>
struct enable_if {};
template <class T>
struct enable_if<true, T> {
  using type = T;
};
template <bool B, class T = void>
using enable_if_t = typename enable_if<B, T>::type;

template <bool B, class T, class F>
struct conditional {
  using type = T;
};
template <class T, class F>
struct conditional<false, T, F> {
  using type = F;
};
template <bool B, class T, class F>
using conditional_t = typename conditional<B, T, F>::type;

template <class A, class B>
struct is_same : bool_constant<__is_same(A, B)> {};
template <class A, class B>
inline constexpr bool is_same_v = __is_same(A, B);

template <class T>
struct remove_addrspace {
  using type = typename strip_as<T>::type;
};
template <class T>
using remove_addrspace_t = typename strip_as<T>::type;

template <class T> struct remove_const { using type = __remove_const(T); };
template <class T> using remove_const_t = __remove_const(T);
template <class T> struct remove_volatile { using type = __remove_volatile(T); };
template <class T> using remove_volatile_t = __remove_volatile(T);
template <class T> struct remove_cv { using type = __remove_cv(T); };
template <class T> using remove_cv_t = __remove_cv(T);
template <class T> struct remove_reference { using type = __remove_reference_t(T); };
template <class T> using remove_reference_t = __remove_reference_t(T);
template <class T> struct remove_pointer { using type = __remove_pointer(T); };
template <class T> using remove_pointer_t = __remove_pointer(T);
template <class T> struct remove_cvref { using type = __remove_cvref(T); };
template <class T> using remove_cvref_t = __remove_cvref(T);
template <class T> struct decay { using type = __decay(T); };
template <class T> using decay_t = __decay(T);
template <class T> struct add_const { using type = const T; };
template <class T> using add_const_t = const T;
template <class T> struct add_pointer { using type = T*; };
template <class T> using add_pointer_t = T*;
template <class T> struct make_signed { using type = __make_signed(T); };
template <class T> using make_signed_t = __make_signed(T);
template <class T> struct make_unsigned { using type = __make_unsigned(T); };
template <class T> using make_unsigned_t = __make_unsigned(T);

namespace traits_detail {
template <class T>
using bare = __remove_cv(typename strip_as<__remove_cv(T)>::type);
template <class E>
inline constexpr bool is_float_scalar = __is_same(E, float) || __is_same(E, half) || __is_same(E, bfloat);
}  // namespace traits_detail

// Metal's scalar types: bool, the integers, half, bfloat and float. Vectors are not scalars.
template <class T>
inline constexpr bool is_floating_point_v = traits_detail::is_float_scalar<traits_detail::bare<T>>;
template <class T>
struct is_floating_point : bool_constant<is_floating_point_v<T>> {};
template <class T>
inline constexpr bool is_integral_v = __is_integral(traits_detail::bare<T>) &&
                                      !__is_same(traits_detail::bare<T>, signed char);
template <class T>
struct is_integral : bool_constant<is_integral_v<T>> {};
template <class T>
inline constexpr bool is_arithmetic_v = is_integral_v<T> || is_floating_point_v<T>;
template <class T>
struct is_arithmetic : bool_constant<is_arithmetic_v<T>> {};
template <class T>
inline constexpr bool is_scalar_v = is_arithmetic_v<T>;
template <class T>
struct is_scalar : bool_constant<is_scalar_v<T>> {};
template <class T>
inline constexpr bool is_signed_v = is_arithmetic_v<T> && (is_floating_point_v<T> ||
                                                           __is_signed(traits_detail::bare<T>));
template <class T>
struct is_signed : bool_constant<is_signed_v<T>> {};
template <class T>
inline constexpr bool is_unsigned_v = is_integral_v<T> && !is_signed_v<T>;
template <class T>
struct is_unsigned : bool_constant<is_unsigned_v<T>> {};
template <class T>
struct is_vector : bool_constant<is_vector_v<traits_detail::bare<T>>> {};
template <class T>
inline constexpr bool is_pointer_v = __is_pointer(T);
template <class T>
struct is_pointer : bool_constant<__is_pointer(T)> {};
template <class T>
inline constexpr bool is_const_v = __is_const(T);
template <class T>
inline constexpr bool is_void_v = __is_void(T);
template <class T>
inline constexpr bool is_class_v = __is_class(T);
template <class T>
inline constexpr bool is_enum_v = __is_enum(T);
template <class T>
inline constexpr bool is_trivially_copyable_v = __is_trivially_copyable(T);
template <class From, class To>
inline constexpr bool is_convertible_v = __is_convertible(From, To);
template <class From, class To>
struct is_convertible : bool_constant<__is_convertible(From, To)> {};
template <class B, class D>
inline constexpr bool is_base_of_v = __is_base_of(B, D);

template <class T>
__add_rvalue_reference(T) declval() noexcept;

template <class F, class... A>
struct invoke_result {
  using type = decltype(declval<F>()(declval<A>()...));
};
template <class F, class... A>
using invoke_result_t = typename invoke_result<F, A...>::type;

// Vector traits: vec_elements<float4>::value == 4, make_scalar_t<half2> == half.
template <class T>
struct vec_elements : integral_constant<int, vinfo<traits_detail::bare<T>>::lanes> {};
template <class T>
struct make_scalar {
  using type = typename vinfo<traits_detail::bare<T>>::elem;
};
template <class T>
using make_scalar_t = typename make_scalar<T>::type;

}  // namespace metal
