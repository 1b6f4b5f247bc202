/* l_png.c — sl.png_c: 8-bit RGB PNG files through libpng, for the mask
 * pictures of viz/mask.lua (issue 18).
 *
 *   sl.png_c.write(path, width, height, pixels)   pixels: a string of
 *       width·height·3 bytes, rows top to bottom, R G B per pixel
 *   sl.png_c.read(path) -> width, height, pixels  (the same layout; any PNG
 *       libpng reads, converted to 8-bit RGB)
 *
 * libpng reports errors by longjmp; every Lua error is raised only after the
 * libpng structures and the file are released. */
#include "l_png.h"
#include "l_tensor.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct png_err {
    char msg[200];
} png_err;

static void on_error(png_structp p, png_const_charp msg)
{
    png_err *e = png_get_error_ptr(p);
    snprintf(e->msg, sizeof e->msg, "%s", msg);
    png_longjmp(p, 1);
}

static void on_warning(png_structp p, png_const_charp msg)
{
    (void)p;
    (void)msg;
}

static int l_write(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer w = luaL_checkinteger(L, 2), h = luaL_checkinteger(L, 3);
    size_t n;
    const char *pix = luaL_checklstring(L, 4, &n);
    if (w < 1 || h < 1 || w > 65535 || h > 65535)
        return sl__lua_error(L, "sl.png_c.write: width and height must be in [1, 65535], found %d x %d", (int)w,
                             (int)h);
    if ((lua_Integer)n != w * h * 3)
        return sl__lua_error(L, "sl.png_c.write: expected %d bytes of pixels (%d x %d x 3), found %d",
                             (int)(w * h * 3), (int)w, (int)h, (int)n);
    FILE *f = fopen(path, "wb");
    if (!f)
        return sl__lua_error(L, "%s: %s", path, strerror(errno));
    png_err err = {{0}};
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, on_error, on_warning);
    png_infop info = p ? png_create_info_struct(p) : NULL;
    if (!p || !info) {
        png_destroy_write_struct(&p, NULL);
        fclose(f);
        return sl__lua_error(L, "sl.png_c.write: out of memory");
    }
    if (setjmp(png_jmpbuf(p))) {
        png_destroy_write_struct(&p, &info);
        fclose(f);
        return sl__lua_error(L, "%s: %s", path, err.msg);
    }
    png_init_io(p, f);
    png_set_IHDR(p, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(p, info);
    for (lua_Integer y = 0; y < h; y++)
        png_write_row(p, (png_const_bytep)(pix + y * w * 3));
    png_write_end(p, NULL);
    png_destroy_write_struct(&p, &info);
    if (fclose(f) != 0)
        return sl__lua_error(L, "%s: %s", path, strerror(errno));
    return 0;
}

static int l_read(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    FILE *f = fopen(path, "rb");
    if (!f)
        return sl__lua_error(L, "%s: %s", path, strerror(errno));
    png_err err = {{0}};
    png_structp p = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, on_error, on_warning);
    png_infop info = p ? png_create_info_struct(p) : NULL;
    unsigned char *volatile buf = NULL;
    png_bytep *volatile rows = NULL;
    if (!p || !info) {
        png_destroy_read_struct(&p, NULL, NULL);
        fclose(f);
        return sl__lua_error(L, "sl.png_c.read: out of memory");
    }
    if (setjmp(png_jmpbuf(p))) {
        if (rows)
            png_free(p, rows);
        png_destroy_read_struct(&p, &info, NULL);
        fclose(f);
        free(buf);
        return sl__lua_error(L, "%s: not a readable PNG file (%s)", path, err.msg);
    }
    png_init_io(p, f);
    png_read_info(p, info);
    png_set_expand(p);
    png_set_strip_16(p);
    png_set_strip_alpha(p);
    png_set_gray_to_rgb(p);
    png_read_update_info(p, info);
    png_uint_32 w = png_get_image_width(p, info), h = png_get_image_height(p, info);
    size_t stride = png_get_rowbytes(p, info);
    if (stride != (size_t)w * 3)
        png_error(p, "unexpected row size after conversion to RGB");
    buf = malloc(stride * h);
    if (!buf)
        png_error(p, "out of memory");
    rows = png_malloc(p, sizeof *rows * h);
    for (png_uint_32 y = 0; y < h; y++)
        rows[y] = buf + y * stride;
    png_read_image(p, rows);
    png_free(p, rows);
    rows = NULL;
    png_read_end(p, NULL);
    png_destroy_read_struct(&p, &info, NULL);
    fclose(f);
    lua_pushinteger(L, w);
    lua_pushinteger(L, h);
    lua_pushlstring(L, (const char *)buf, stride * h);
    free(buf);
    return 3;
}

void sl__lua_open_png(lua_State *L)
{
    static const luaL_Reg lib[] = {{"write", l_write}, {"read", l_read}, {NULL, NULL}};
    luaL_newlib(L, lib);
    lua_setfield(L, -2, "png_c");
}
