/* A stand-in for caffe.exe in the train.bat tests: it records the working directory and the
   arguments it received, as UTF-8, one per line, in argv.txt beside itself, and exits 0. */
#include <stdio.h>
#include <windows.h>

static void write_utf8(FILE *out, const wchar_t *text)
{
    char buffer[8192];
    int size = WideCharToMultiByte(CP_UTF8, 0, text, -1, buffer, sizeof buffer, NULL, NULL);
    if (size > 0)
        fwrite(buffer, 1, (size_t)size - 1, out);
    fputc('\n', out);
}

int wmain(int argc, wchar_t **argv)
{
    wchar_t path[4096], cwd[4096];
    DWORD length = GetModuleFileNameW(NULL, path, 4096);
    while (length > 0 && path[length - 1] != L'\\')
        length--;
    wcscpy(path + length, L"argv.txt");
    FILE *out = _wfopen(path, L"wb");
    if (out == NULL)
        return 2;
    GetCurrentDirectoryW(4096, cwd);
    write_utf8(out, cwd);
    for (int i = 1; i < argc; i++)
        write_utf8(out, argv[i]);
    fclose(out);
    return 0;
}
